//! Domain types of the agent protocol and their checked conversions from
//! and to the generated protobuf types.

use std::io::{Read, Write};

use protobuf::{EnumOrUnknown, Message, MessageField};

use crate::frame::{read_frame, write_frame};
use crate::generated::agent as pb;
use crate::mount_options::{self, MountKind, PropagationChange};
use crate::{invalid, ProtocolError, PROTOCOL_VERSION};

/// Largest number of args, env entries, mounts, groups or rlimits accepted.
pub const MAX_LIST_LEN: usize = 4096;

/// Highest signal number Linux delivers (SIGRTMAX).
pub const MAX_SIGNAL: i32 = 64;

/// Bytes of one classic-BPF instruction (`struct sock_filter`).
pub const SECCOMP_INSN_LEN: usize = 8;
/// Longest seccomp program the kernel loads (BPF_MAXINSNS).
pub const MAX_SECCOMP_INSNS: usize = 4096;
/// SECCOMP_FILTER_FLAG_* bits a filter may carry: TSYNC (1), LOG (2) and
/// SPEC_ALLOW (4). NEW_LISTENER and the flags that go with it need a
/// seccomp agent on the host, which a VM cannot reach.
pub const SECCOMP_FLAGS_ALLOWED: u32 = 0b111;
/// Most device rules accepted (the program that enforces them stays far
/// below the kernel's limits).
pub const MAX_DEVICE_RULES: usize = 1024;
/// Longest sysctl name and value accepted.
pub const MAX_SYSCTL_NAME: usize = 256;
pub const MAX_SYSCTL_VALUE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub protocol_version: u32,
    pub agent_version: String,
    pub kernel_release: String,
    pub uptime_ns: u64,
}

/// Fewest and most entropy bytes an [`Identity`] carries.
pub const MIN_ENTROPY_LEN: usize = 32;
pub const MAX_ENTROPY_LEN: usize = 256;
/// Longest VM id an [`Identity`] carries.
pub const MAX_VM_ID_LEN: usize = 64;

/// What makes a VM itself: the host sends it first, on every VM, because
/// VMs restored from one snapshot start from identical memory (same RNG
/// state, same wall clock). Only [`Identity::new`] and decoding make one,
/// so every identity has [`MIN_ENTROPY_LEN`]..=[`MAX_ENTROPY_LEN`] bytes of
/// entropy, a non-zero clock and a valid VM id.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    entropy: Vec<u8>,
    realtime_ns: u64,
    vm_id: String,
}

impl Identity {
    pub fn new(
        entropy: Vec<u8>,
        realtime_ns: u64,
        vm_id: String,
    ) -> Result<Identity, ProtocolError> {
        if !(MIN_ENTROPY_LEN..=MAX_ENTROPY_LEN).contains(&entropy.len()) {
            return Err(invalid(
                "identity.entropy",
                format!(
                    "{} bytes, not {MIN_ENTROPY_LEN}..={MAX_ENTROPY_LEN}",
                    entropy.len()
                ),
            ));
        }
        if realtime_ns == 0 {
            return Err(invalid("identity.realtime_ns", "zero"));
        }
        check_vm_id(&vm_id).map_err(|e| invalid("identity.vm_id", e))?;
        Ok(Identity {
            entropy,
            realtime_ns,
            vm_id,
        })
    }

    /// Host random bytes for the guest kernel's pool.
    pub fn entropy(&self) -> &[u8] {
        &self.entropy
    }

    /// The host's wall clock in nanoseconds since the Unix epoch.
    pub fn realtime_ns(&self) -> u64 {
        self.realtime_ns
    }

    pub fn vm_id(&self) -> &str {
        &self.vm_id
    }
}

/// Never shows the entropy: a debug line must not leak what seeds the
/// guest's RNG.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("entropy", &format_args!("<{} bytes>", self.entropy.len()))
            .field("realtime_ns", &self.realtime_ns)
            .field("vm_id", &self.vm_id)
            .finish()
    }
}

/// Checks a VM id: 1-[`MAX_VM_ID_LEN`] characters of `A-Z a-z 0-9 _ . -`,
/// not starting with a dot (the host's rule for the ids that name jails and
/// cgroups; no NUL, no slash).
pub fn check_vm_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_VM_ID_LEN {
        return Err(format!("{} bytes, not 1..={MAX_VM_ID_LEN}", id.len()));
    }
    if id.starts_with('.') {
        return Err(format!(
            "{:?} starts with a dot",
            crate::text::sanitize(id, 80)
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(format!(
            "{:?} has a character other than A-Z a-z 0-9 _ . -",
            crate::text::sanitize(id, 80)
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleSize {
    pub rows: u16,
    pub cols: u16,
}

/// The five capability sets; bit N is capability number N.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// A seccomp filter compiled on the host: a classic-BPF program of
/// `struct sock_filter` instructions (little-endian) and the flags to
/// install it with. Only [`SeccompFilter::new`] makes one, so every filter
/// has a whole number of instructions, at least one and at most
/// [`MAX_SECCOMP_INSNS`], and only [`SECCOMP_FLAGS_ALLOWED`] flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompFilter {
    program: Vec<u8>,
    flags: u32,
}

impl SeccompFilter {
    pub fn new(program: Vec<u8>, flags: u32) -> Result<SeccompFilter, ProtocolError> {
        if program.is_empty() || !program.len().is_multiple_of(SECCOMP_INSN_LEN) {
            return Err(invalid(
                "process.seccomp_filter",
                format!(
                    "{} bytes is not a whole number of {SECCOMP_INSN_LEN}-byte instructions",
                    program.len()
                ),
            ));
        }
        let insns = program.len() / SECCOMP_INSN_LEN;
        if insns > MAX_SECCOMP_INSNS {
            return Err(invalid(
                "process.seccomp_filter",
                format!("{insns} instructions, at most {MAX_SECCOMP_INSNS}"),
            ));
        }
        if flags & !SECCOMP_FLAGS_ALLOWED != 0 {
            return Err(invalid(
                "process.seccomp_flags",
                format!("{flags:#x} has flags other than TSYNC, LOG and SPEC_ALLOW"),
            ));
        }
        Ok(SeccompFilter { program, flags })
    }

    /// The instructions, 8 bytes each.
    pub fn program(&self) -> &[u8] {
        &self.program
    }

    pub fn flags(&self) -> u32 {
        self.flags
    }

    pub fn instructions(&self) -> usize {
        self.program.len() / SECCOMP_INSN_LEN
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: User,
    pub terminal: bool,
    pub console_size: Option<ConsoleSize>,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privileges: bool,
    /// All zero unless config.json lists capabilities.
    pub capabilities: Capabilities,
    pub seccomp: Option<SeccompFilter>,
    /// `/proc/self/oom_score_adj` of the process (-1000..=1000).
    pub oom_score_adj: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A virtio-9p share exported under this tag.
    Share(String),
    /// A filesystem the guest kernel makes (tmpfs, proc, sysfs, ...).
    Fs(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub destination: String,
    pub source: MountSource,
    pub options: Vec<String>,
    pub readonly: bool,
    /// With a share: bind only this file of it (a bare name) onto the
    /// destination. VMs share directories, so a file bind mount travels as
    /// its parent directory plus the file's name.
    pub share_file: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Root {
    pub share_tag: String,
    pub readonly: bool,
    /// The image is this directory of the share (one plain name), not
    /// the share's root: a VM leased from a pool has its image attached
    /// under a share made before the request was known.
    pub share_subdir: Option<String>,
}

/// A kernel parameter for `/proc/sys`, by its dotted name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    pub name: String,
    pub value: String,
}

impl Sysctl {
    /// `net.ipv4.ip_forward` → `net/ipv4/ip_forward`, the path under
    /// /proc/sys.
    pub fn path(&self) -> String {
        self.name.replace('.', "/")
    }
}

/// Checks a sysctl name: dot-separated non-empty components without `/`
/// or NUL (so it can name nothing outside /proc/sys), bounded.
/// A single path component: not empty, no slash, no NUL, not `.` or `..`.
pub fn check_plain_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 255
        || name.contains(['/', '\0'])
        || name == "."
        || name == ".."
    {
        return Err(format!("{name:?} is not a plain file name"));
    }
    Ok(())
}

pub fn check_sysctl(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_SYSCTL_NAME {
        return Err(format!(
            "name {name:?} is empty or longer than {MAX_SYSCTL_NAME} bytes"
        ));
    }
    if name.split('.').any(|c| c.is_empty()) || name.contains(['/', '\0']) {
        return Err(format!(
            "name {name:?} is not a dotted sysctl name (empty component, '/' or NUL)"
        ));
    }
    if value.len() > MAX_SYSCTL_VALUE || value.contains('\0') {
        return Err(format!(
            "value of {name} is longer than {MAX_SYSCTL_VALUE} bytes or holds a NUL"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// Every device (OCI type "a").
    All,
    Char,
    Block,
}

/// The accesses a device rule is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceAccess {
    pub read: bool,
    pub write: bool,
    pub mknod: bool,
}

impl DeviceAccess {
    pub const ALL: DeviceAccess = DeviceAccess {
        read: true,
        write: true,
        mknod: true,
    };
}

/// One rule of the container's device policy. `None` numbers match any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    pub kind: DeviceKind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: DeviceAccess,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Run {
    pub root: Root,
    pub process: Process,
    pub hostname: String,
    pub mounts: Vec<Mount>,
    pub memory_limit_bytes: Option<u64>,
    pub pids_limit: Option<u64>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub sysctls: Vec<Sysctl>,
    /// The last rule that matches a device and an access decides it; none
    /// matching denies.
    pub device_rules: Vec<DeviceRule>,
    pub rootfs_propagation: Option<PropagationChange>,
}

/// One resource limit of an [`Update`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Unlimited,
    Amount(u64),
}

/// New limits for the container's cgroup; `None` leaves one as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Update {
    pub memory_bytes: Option<Limit>,
    pub pids: Option<Limit>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMsg {
    /// The VM's fresh identity: the first message after Ready (answered by
    /// Identified, or StartFailed when it cannot be applied).
    Identity(Identity),
    /// Set the process up (answered by Prepared or StartFailed).
    Run(Box<Run>),
    /// Start the prepared process (answered by Started or StartFailed).
    Start,
    Signal {
        signal: i32,
        all: bool,
    },
    Resize(ConsoleSize),
    StdinClose {
        total_bytes: u64,
    },
    /// Every byte that Exit counted has arrived: the VM may end.
    ExitAck,
    /// Change limits (answered by Updated).
    Update(Update),
}

impl HostMsg {
    /// The message's kind, for logs and errors (never its contents).
    pub fn name(&self) -> &'static str {
        match self {
            HostMsg::Identity(_) => "Identity",
            HostMsg::Run(_) => "Run",
            HostMsg::Start => "Start",
            HostMsg::Signal { .. } => "Signal",
            HostMsg::Resize(_) => "Resize",
            HostMsg::StdinClose { .. } => "StdinClose",
            HostMsg::ExitAck => "ExitAck",
            HostMsg::Update(_) => "Update",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFailReason {
    NotFound,
    NotExecutable,
    Setup,
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128+signal.
    pub status: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

/// Longest path a Prepared message may carry.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest message text a guest may send (StartFailed, Updated).
pub const MAX_MESSAGE_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestMsg {
    Ready(Ready),
    /// The host's Identity is applied; `uptime_ns` is the guest's
    /// CLOCK_BOOTTIME then.
    Identified {
        uptime_ns: u64,
    },
    /// The process is set up; args[0] resolved to `path`.
    Prepared {
        path: String,
    },
    /// The outcome of an Update: `None` when applied.
    Updated {
        error: Option<String>,
    },
    Started {
        pid: u32,
    },
    StartFailed {
        reason: StartFailReason,
        message: String,
    },
    Exit(Exit),
}

/// A message that travels as one frame.
pub trait Wire: Sized {
    const NAME: &'static str;
    fn encode(&self) -> Result<Vec<u8>, ProtocolError>;
    fn decode(bytes: &[u8]) -> Result<Self, ProtocolError>;
}

/// Writes one message as one frame.
pub fn write_msg<W: Write, M: Wire>(w: &mut W, msg: &M) -> Result<(), ProtocolError> {
    let bytes = msg.encode()?;
    write_frame(w, &bytes)?;
    Ok(())
}

/// Reads one message; `Ok(None)` at a clean end of stream.
pub fn read_msg<R: Read, M: Wire>(r: &mut R) -> Result<Option<M>, ProtocolError> {
    match read_frame(r)? {
        None => Ok(None),
        Some(bytes) => M::decode(&bytes).map(Some),
    }
}

/// Checks the agent's announced version against ours.
pub fn check_version(ready: &Ready) -> Result<(), ProtocolError> {
    if ready.protocol_version != PROTOCOL_VERSION {
        return Err(ProtocolError::Version {
            got: ready.protocol_version,
            want: PROTOCOL_VERSION,
        });
    }
    Ok(())
}

fn encode<M: Message>(what: &'static str, m: &M) -> Result<Vec<u8>, ProtocolError> {
    m.write_to_bytes()
        .map_err(|source| ProtocolError::Encode { what, source })
}

fn decode<M: Message>(what: &'static str, bytes: &[u8]) -> Result<M, ProtocolError> {
    M::parse_from_bytes(bytes).map_err(|source| ProtocolError::Decode { what, source })
}

fn bounded<T>(field: &'static str, v: Vec<T>) -> Result<Vec<T>, ProtocolError> {
    if v.len() > MAX_LIST_LEN {
        return Err(invalid(
            field,
            format!("{} entries, at most {MAX_LIST_LEN}", v.len()),
        ));
    }
    Ok(v)
}

fn no_nul(field: &'static str, s: &str) -> Result<(), ProtocolError> {
    if s.contains('\0') {
        return Err(invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

fn absolute(field: &'static str, s: &str) -> Result<(), ProtocolError> {
    no_nul(field, s)?;
    if !s.starts_with('/') {
        return Err(invalid(field, format!("{s:?} is not an absolute path")));
    }
    Ok(())
}

fn signal(field: &'static str, n: u32) -> Result<i32, ProtocolError> {
    match i32::try_from(n) {
        Ok(s) if (1..=MAX_SIGNAL).contains(&s) => Ok(s),
        _ => Err(invalid(field, format!("{n} is not a signal number"))),
    }
}

fn limit(field: &'static str, l: &pb::Limit) -> Result<Limit, ProtocolError> {
    use pb::limit::Value;
    match l.value {
        Some(Value::Unlimited(true)) => Ok(Limit::Unlimited),
        Some(Value::Amount(n)) => Ok(Limit::Amount(n)),
        _ => Err(invalid(field, "neither unlimited nor an amount")),
    }
}

fn pb_limit(l: Limit) -> pb::Limit {
    use pb::limit::Value;
    pb::Limit {
        value: Some(match l {
            Limit::Unlimited => Value::Unlimited(true),
            Limit::Amount(n) => Value::Amount(n),
        }),
        ..Default::default()
    }
}

fn console_size(s: &pb::ConsoleSize) -> Result<ConsoleSize, ProtocolError> {
    let rows = u16::try_from(s.rows).map_err(|_| invalid("console_size.rows", "too large"))?;
    let cols = u16::try_from(s.cols).map_err(|_| invalid("console_size.cols", "too large"))?;
    Ok(ConsoleSize { rows, cols })
}

fn pb_console_size(s: ConsoleSize) -> pb::ConsoleSize {
    pb::ConsoleSize {
        rows: s.rows.into(),
        cols: s.cols.into(),
        ..Default::default()
    }
}

impl TryFrom<pb::Process> for Process {
    type Error = ProtocolError;
    fn try_from(p: pb::Process) -> Result<Self, ProtocolError> {
        let args = bounded("process.args", p.args)?;
        if args.is_empty() {
            return Err(invalid("process.args", "empty"));
        }
        if args[0].is_empty() {
            return Err(invalid("process.args", "args[0] is empty"));
        }
        for a in &args {
            no_nul("process.args", a)?;
        }
        let env = bounded("process.env", p.env)?;
        for e in &env {
            no_nul("process.env", e)?;
            if !e.contains('=') {
                return Err(invalid("process.env", format!("{e:?} has no '='")));
            }
        }
        absolute("process.cwd", &p.cwd)?;
        let user = p.user.into_option().unwrap_or_default();
        let user = User {
            uid: user.uid,
            gid: user.gid,
            additional_gids: bounded("process.user.additional_gids", user.additional_gids)?,
            umask: user.has_umask.then_some(user.umask),
        };
        let console_size = p.console_size.as_ref().map(console_size).transpose()?;
        let rlimits = bounded("process.rlimits", p.rlimits)?
            .into_iter()
            .map(|r| Rlimit {
                resource: r.resource,
                soft: r.soft,
                hard: r.hard,
            })
            .collect();
        let capabilities = p
            .capabilities
            .as_ref()
            .map(|c| Capabilities {
                bounding: c.bounding,
                effective: c.effective,
                permitted: c.permitted,
                inheritable: c.inheritable,
                ambient: c.ambient,
            })
            .unwrap_or_default();
        let seccomp = if p.seccomp_filter.is_empty() {
            if p.seccomp_flags != 0 {
                return Err(invalid("process.seccomp_flags", "set without a filter"));
            }
            None
        } else {
            Some(SeccompFilter::new(p.seccomp_filter, p.seccomp_flags)?)
        };
        if let Some(adj) = p.oom_score_adj {
            if !(-1000..=1000).contains(&adj) {
                return Err(invalid(
                    "process.oom_score_adj",
                    format!("{adj} is outside -1000..=1000"),
                ));
            }
        }
        Ok(Process {
            args,
            env,
            cwd: p.cwd,
            user,
            terminal: p.terminal,
            console_size,
            rlimits,
            no_new_privileges: p.no_new_privileges,
            capabilities,
            seccomp,
            oom_score_adj: p.oom_score_adj,
        })
    }
}

impl From<&Process> for pb::Process {
    fn from(p: &Process) -> Self {
        pb::Process {
            args: p.args.clone(),
            env: p.env.clone(),
            cwd: p.cwd.clone(),
            user: MessageField::some(pb::User {
                uid: p.user.uid,
                gid: p.user.gid,
                additional_gids: p.user.additional_gids.clone(),
                umask: p.user.umask.unwrap_or(0),
                has_umask: p.user.umask.is_some(),
                ..Default::default()
            }),
            terminal: p.terminal,
            console_size: p.console_size.map(pb_console_size).into(),
            rlimits: p
                .rlimits
                .iter()
                .map(|r| pb::Rlimit {
                    resource: r.resource,
                    soft: r.soft,
                    hard: r.hard,
                    ..Default::default()
                })
                .collect(),
            no_new_privileges: p.no_new_privileges,
            capabilities: (p.capabilities != Capabilities::default())
                .then(|| pb::Capabilities {
                    bounding: p.capabilities.bounding,
                    effective: p.capabilities.effective,
                    permitted: p.capabilities.permitted,
                    inheritable: p.capabilities.inheritable,
                    ambient: p.capabilities.ambient,
                    ..Default::default()
                })
                .into(),
            seccomp_filter: p
                .seccomp
                .as_ref()
                .map(|f| f.program.clone())
                .unwrap_or_default(),
            seccomp_flags: p.seccomp.as_ref().map_or(0, |f| f.flags),
            oom_score_adj: p.oom_score_adj,
            ..Default::default()
        }
    }
}

impl TryFrom<pb::Mount> for Mount {
    type Error = ProtocolError;
    fn try_from(m: pb::Mount) -> Result<Self, ProtocolError> {
        absolute("mount.destination", &m.destination)?;
        let source = match m.source {
            Some(pb::mount::Source::ShareTag(t)) if !t.is_empty() => MountSource::Share(t),
            Some(pb::mount::Source::FsType(t)) if !t.is_empty() => MountSource::Fs(t),
            _ => return Err(invalid("mount.source", "neither a share tag nor a type")),
        };
        let options = bounded("mount.options", m.options)?;
        let kind = match &source {
            MountSource::Share(_) => MountKind::Share,
            MountSource::Fs(t) => MountKind::Fs(t),
        };
        for o in &options {
            no_nul("mount.options", o)?;
        }
        mount_options::parse_all(&options, kind)
            .map_err(|e| invalid("mount.options", e.to_string()))?;
        let share_file = if m.share_file.is_empty() {
            None
        } else {
            check_plain_name(&m.share_file).map_err(|e| invalid("mount.share_file", e))?;
            if !matches!(source, MountSource::Share(_)) {
                return Err(invalid(
                    "mount.share_file",
                    "set on a mount that is not a share",
                ));
            }
            Some(m.share_file)
        };
        Ok(Mount {
            destination: m.destination,
            source,
            options,
            readonly: m.readonly,
            share_file,
        })
    }
}

impl From<&Mount> for pb::Mount {
    fn from(m: &Mount) -> Self {
        pb::Mount {
            destination: m.destination.clone(),
            source: Some(match &m.source {
                MountSource::Share(t) => pb::mount::Source::ShareTag(t.clone()),
                MountSource::Fs(t) => pb::mount::Source::FsType(t.clone()),
            }),
            options: m.options.clone(),
            readonly: m.readonly,
            share_file: m.share_file.clone().unwrap_or_default(),
            ..Default::default()
        }
    }
}

impl TryFrom<pb::Run> for Run {
    type Error = ProtocolError;
    fn try_from(r: pb::Run) -> Result<Self, ProtocolError> {
        let root = r
            .root
            .into_option()
            .ok_or_else(|| invalid("run.root", "missing"))?;
        if root.share_tag.is_empty() {
            return Err(invalid("run.root.share_tag", "empty"));
        }
        let share_subdir = if root.share_subdir.is_empty() {
            None
        } else {
            check_plain_name(&root.share_subdir)
                .map_err(|e| invalid("run.root.share_subdir", e))?;
            Some(root.share_subdir)
        };
        let process = r
            .process
            .into_option()
            .ok_or_else(|| invalid("run.process", "missing"))?;
        no_nul("run.hostname", &r.hostname)?;
        if r.hostname.len() > 64 {
            return Err(invalid("run.hostname", "longer than 64 bytes"));
        }
        let mounts = bounded("run.mounts", r.mounts)?
            .into_iter()
            .map(Mount::try_from)
            .collect::<Result<_, _>>()?;
        let masked_paths = bounded("run.masked_paths", r.masked_paths)?;
        for p in &masked_paths {
            absolute("run.masked_paths", p)?;
        }
        let readonly_paths = bounded("run.readonly_paths", r.readonly_paths)?;
        for p in &readonly_paths {
            absolute("run.readonly_paths", p)?;
        }
        let sysctls = bounded("run.sysctls", r.sysctls)?
            .into_iter()
            .map(|s| {
                check_sysctl(&s.name, &s.value).map_err(|e| invalid("run.sysctls", e))?;
                Ok(Sysctl {
                    name: s.name,
                    value: s.value,
                })
            })
            .collect::<Result<_, ProtocolError>>()?;
        if r.device_rules.len() > MAX_DEVICE_RULES {
            return Err(invalid(
                "run.device_rules",
                format!("{} rules, at most {MAX_DEVICE_RULES}", r.device_rules.len()),
            ));
        }
        let device_rules = r
            .device_rules
            .iter()
            .map(device_rule)
            .collect::<Result<_, _>>()?;
        let rootfs_propagation = if r.rootfs_propagation.is_empty() {
            None
        } else {
            Some(
                mount_options::propagation(&r.rootfs_propagation).ok_or_else(|| {
                    invalid(
                        "run.rootfs_propagation",
                        format!("{:?} is not a propagation", r.rootfs_propagation),
                    )
                })?,
            )
        };
        Ok(Run {
            root: Root {
                share_tag: root.share_tag,
                readonly: root.readonly,
                share_subdir,
            },
            process: Process::try_from(process)?,
            hostname: r.hostname,
            mounts,
            memory_limit_bytes: (r.memory_limit_bytes > 0).then_some(r.memory_limit_bytes),
            pids_limit: (r.pids_limit > 0).then_some(r.pids_limit),
            masked_paths,
            readonly_paths,
            sysctls,
            device_rules,
            rootfs_propagation,
        })
    }
}

impl From<&Run> for pb::Run {
    fn from(r: &Run) -> Self {
        pb::Run {
            root: MessageField::some(pb::Root {
                share_tag: r.root.share_tag.clone(),
                readonly: r.root.readonly,
                share_subdir: r.root.share_subdir.clone().unwrap_or_default(),
                ..Default::default()
            }),
            process: MessageField::some((&r.process).into()),
            hostname: r.hostname.clone(),
            mounts: r.mounts.iter().map(Into::into).collect(),
            memory_limit_bytes: r.memory_limit_bytes.unwrap_or(0),
            pids_limit: r.pids_limit.unwrap_or(0),
            masked_paths: r.masked_paths.clone(),
            readonly_paths: r.readonly_paths.clone(),
            sysctls: r
                .sysctls
                .iter()
                .map(|s| pb::Sysctl {
                    name: s.name.clone(),
                    value: s.value.clone(),
                    ..Default::default()
                })
                .collect(),
            device_rules: r.device_rules.iter().map(pb_device_rule).collect(),
            rootfs_propagation: r
                .rootfs_propagation
                .map(propagation_word)
                .unwrap_or_default()
                .to_string(),
            ..Default::default()
        }
    }
}

fn device_rule(r: &pb::DeviceRule) -> Result<DeviceRule, ProtocolError> {
    use pb::device_rule::Kind;
    let kind = match r.kind.enum_value() {
        Ok(Kind::ALL) => DeviceKind::All,
        Ok(Kind::CHAR) => DeviceKind::Char,
        Ok(Kind::BLOCK) => DeviceKind::Block,
        _ => return Err(invalid("run.device_rules.kind", "not all, char or block")),
    };
    Ok(DeviceRule {
        allow: r.allow,
        kind,
        major: r.major,
        minor: r.minor,
        access: DeviceAccess {
            read: r.read,
            write: r.write,
            mknod: r.mknod,
        },
    })
}

fn pb_device_rule(r: &DeviceRule) -> pb::DeviceRule {
    use pb::device_rule::Kind;
    pb::DeviceRule {
        allow: r.allow,
        kind: EnumOrUnknown::new(match r.kind {
            DeviceKind::All => Kind::ALL,
            DeviceKind::Char => Kind::CHAR,
            DeviceKind::Block => Kind::BLOCK,
        }),
        major: r.major,
        minor: r.minor,
        read: r.access.read,
        write: r.access.write,
        mknod: r.access.mknod,
        ..Default::default()
    }
}

/// The OCI word of a propagation change.
pub fn propagation_word(p: PropagationChange) -> &'static str {
    use mount_options::Propagation::*;
    match (p.kind, p.recursive) {
        (Private, false) => "private",
        (Private, true) => "rprivate",
        (Shared, false) => "shared",
        (Shared, true) => "rshared",
        (Slave, false) => "slave",
        (Slave, true) => "rslave",
        (Unbindable, false) => "unbindable",
        (Unbindable, true) => "runbindable",
    }
}

impl Wire for HostMsg {
    const NAME: &'static str = "host";

    fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        use pb::host_message::Kind;
        let kind = match self {
            HostMsg::Identity(i) => Kind::Identity(pb::Identity {
                entropy: i.entropy.clone(),
                realtime_ns: i.realtime_ns,
                vm_id: i.vm_id.clone(),
                ..Default::default()
            }),
            HostMsg::Run(r) => Kind::Run(r.as_ref().into()),
            HostMsg::Signal { signal, all } => Kind::Signal(pb::Signal {
                signal: *signal as u32,
                all: *all,
                ..Default::default()
            }),
            HostMsg::Resize(s) => Kind::Resize(pb::Resize {
                size: MessageField::some(pb_console_size(*s)),
                ..Default::default()
            }),
            HostMsg::StdinClose { total_bytes } => Kind::StdinClose(pb::StdinClose {
                total_bytes: *total_bytes,
                ..Default::default()
            }),
            HostMsg::Start => Kind::Start(pb::Start::default()),
            HostMsg::ExitAck => Kind::ExitAck(pb::ExitAck::default()),
            HostMsg::Update(u) => Kind::Update(pb::Update {
                memory_bytes: u.memory_bytes.map(pb_limit).into(),
                pids: u.pids.map(pb_limit).into(),
                ..Default::default()
            }),
        };
        let m = pb::HostMessage {
            kind: Some(kind),
            ..Default::default()
        };
        encode(Self::NAME, &m)
    }

    fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        use pb::host_message::Kind;
        let m: pb::HostMessage = decode(Self::NAME, bytes)?;
        match m.kind {
            Some(Kind::Identity(i)) => Ok(HostMsg::Identity(Identity::new(
                i.entropy,
                i.realtime_ns,
                i.vm_id,
            )?)),
            Some(Kind::Run(r)) => Ok(HostMsg::Run(Box::new(Run::try_from(r)?))),
            Some(Kind::Signal(s)) => Ok(HostMsg::Signal {
                signal: signal("signal.signal", s.signal)?,
                all: s.all,
            }),
            Some(Kind::Resize(r)) => {
                let size = r
                    .size
                    .as_ref()
                    .ok_or_else(|| invalid("resize.size", "missing"))?;
                Ok(HostMsg::Resize(console_size(size)?))
            }
            Some(Kind::StdinClose(c)) => Ok(HostMsg::StdinClose {
                total_bytes: c.total_bytes,
            }),
            Some(Kind::Start(_)) => Ok(HostMsg::Start),
            Some(Kind::ExitAck(_)) => Ok(HostMsg::ExitAck),
            Some(Kind::Update(u)) => Ok(HostMsg::Update(Update {
                memory_bytes: u
                    .memory_bytes
                    .as_ref()
                    .map(|l| limit("update.memory_bytes", l))
                    .transpose()?,
                pids: u
                    .pids
                    .as_ref()
                    .map(|l| limit("update.pids", l))
                    .transpose()?,
            })),
            None => Err(invalid("host_message.kind", "not set")),
        }
    }
}

impl Wire for GuestMsg {
    const NAME: &'static str = "guest";

    fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        use pb::guest_message::Kind;
        let kind = match self {
            GuestMsg::Ready(r) => Kind::Ready(pb::Ready {
                protocol_version: r.protocol_version,
                agent_version: r.agent_version.clone(),
                kernel_release: r.kernel_release.clone(),
                uptime_ns: r.uptime_ns,
                ..Default::default()
            }),
            GuestMsg::Identified { uptime_ns } => Kind::Identified(pb::Identified {
                uptime_ns: *uptime_ns,
                ..Default::default()
            }),
            GuestMsg::Prepared { path } => Kind::Prepared(pb::Prepared {
                path: path.clone(),
                ..Default::default()
            }),
            GuestMsg::Updated { error } => Kind::Updated(pb::Updated {
                error: error.clone().unwrap_or_default(),
                ..Default::default()
            }),
            GuestMsg::Started { pid } => Kind::Started(pb::Started {
                pid: *pid,
                ..Default::default()
            }),
            GuestMsg::StartFailed { reason, message } => {
                use pb::start_failed::Reason;
                let reason = match reason {
                    StartFailReason::NotFound => Reason::NOT_FOUND,
                    StartFailReason::NotExecutable => Reason::NOT_EXECUTABLE,
                    StartFailReason::Setup => Reason::SETUP,
                    StartFailReason::Invalid => Reason::INVALID,
                };
                Kind::StartFailed(pb::StartFailed {
                    reason: EnumOrUnknown::new(reason),
                    message: message.clone(),
                    ..Default::default()
                })
            }
            GuestMsg::Exit(e) => Kind::Exit(pb::Exit {
                status: e.status as u32,
                signal: e.signal.unwrap_or(0) as u32,
                oom_killed: e.oom_killed,
                stdout_bytes: e.stdout_bytes,
                stderr_bytes: e.stderr_bytes,
                ..Default::default()
            }),
        };
        let m = pb::GuestMessage {
            kind: Some(kind),
            ..Default::default()
        };
        encode(Self::NAME, &m)
    }

    fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        use pb::guest_message::Kind;
        let m: pb::GuestMessage = decode(Self::NAME, bytes)?;
        match m.kind {
            Some(Kind::Ready(r)) => {
                if r.agent_version.len() > 256 || r.kernel_release.len() > 256 {
                    return Err(invalid("ready", "version string longer than 256 bytes"));
                }
                // Both end up in logs.
                Ok(GuestMsg::Ready(Ready {
                    protocol_version: r.protocol_version,
                    agent_version: crate::text::sanitize(&r.agent_version, 256),
                    kernel_release: crate::text::sanitize(&r.kernel_release, 256),
                    uptime_ns: r.uptime_ns,
                }))
            }
            Some(Kind::Identified(i)) => Ok(GuestMsg::Identified {
                uptime_ns: i.uptime_ns,
            }),
            Some(Kind::Prepared(p)) => {
                if p.path.len() > MAX_PATH_LEN {
                    return Err(invalid(
                        "prepared.path",
                        format!("longer than {MAX_PATH_LEN} bytes"),
                    ));
                }
                Ok(GuestMsg::Prepared { path: p.path })
            }
            Some(Kind::Updated(u)) => {
                let error = crate::text::sanitize(&u.error, MAX_MESSAGE_LEN);
                Ok(GuestMsg::Updated {
                    error: (!error.is_empty()).then_some(error),
                })
            }
            Some(Kind::Started(s)) => Ok(GuestMsg::Started { pid: s.pid }),
            Some(Kind::StartFailed(f)) => {
                use pb::start_failed::Reason;
                let reason = match f.reason.enum_value() {
                    Ok(Reason::NOT_FOUND) => StartFailReason::NotFound,
                    Ok(Reason::NOT_EXECUTABLE) => StartFailReason::NotExecutable,
                    Ok(Reason::SETUP) => StartFailReason::Setup,
                    Ok(Reason::INVALID) => StartFailReason::Invalid,
                    _ => return Err(invalid("start_failed.reason", "unknown")),
                };
                // The message is shown to users (mu2's stderr, containerd's
                // error text): bounded, and no control character survives.
                let message = crate::text::sanitize(&f.message, MAX_MESSAGE_LEN);
                Ok(GuestMsg::StartFailed { reason, message })
            }
            Some(Kind::Exit(e)) => {
                if e.status > 255 {
                    return Err(invalid("exit.status", format!("{} is above 255", e.status)));
                }
                let sig = if e.signal == 0 {
                    None
                } else {
                    Some(signal("exit.signal", e.signal)?)
                };
                Ok(GuestMsg::Exit(Exit {
                    status: e.status as i32,
                    signal: sig,
                    oom_killed: e.oom_killed,
                    stdout_bytes: e.stdout_bytes,
                    stderr_bytes: e.stderr_bytes,
                }))
            }
            None => Err(invalid("guest_message.kind", "not set")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_run() -> Run {
        Run {
            root: Root {
                share_tag: "rootfs".into(),
                readonly: false,
                share_subdir: Some("root".into()),
            },
            process: Process {
                args: vec!["sh".into(), "".into(), "héllo wörld".into()],
                env: vec!["A=b c=d".into(), "PATH=/bin".into()],
                cwd: "/tmp".into(),
                user: User {
                    uid: 1000,
                    gid: 1000,
                    additional_gids: vec![50, 63],
                    umask: Some(0o022),
                },
                terminal: true,
                console_size: Some(ConsoleSize {
                    rows: 40,
                    cols: 120,
                }),
                rlimits: vec![Rlimit {
                    resource: 7,
                    soft: 1024,
                    hard: 4096,
                }],
                no_new_privileges: true,
                capabilities: Capabilities {
                    bounding: 0x2000_0420,
                    effective: 0x2000_0420,
                    permitted: 0x2000_0420,
                    inheritable: 0,
                    ambient: 1 << 10,
                },
                seccomp: Some(SeccompFilter::new(vec![6, 0, 0, 0, 0, 0, 0xff, 0x7f], 2).unwrap()),
                oom_score_adj: Some(-998),
            },
            hostname: "mu2".into(),
            mounts: vec![
                Mount {
                    destination: "/data".into(),
                    source: MountSource::Share("vol0".into()),
                    options: vec!["ro".into()],
                    readonly: true,
                    share_file: None,
                },
                Mount {
                    destination: "/etc/hosts".into(),
                    source: MountSource::Share("vol1".into()),
                    options: vec![],
                    readonly: false,
                    share_file: Some("hosts".into()),
                },
                Mount {
                    destination: "/scratch".into(),
                    source: MountSource::Fs("tmpfs".into()),
                    options: vec!["size=1m".into()],
                    readonly: false,
                    share_file: None,
                },
            ],
            memory_limit_bytes: Some(64 << 20),
            pids_limit: None,
            masked_paths: vec!["/proc/kcore".into(), "/sys/firmware".into()],
            readonly_paths: vec!["/proc/sys".into()],
            sysctls: vec![Sysctl {
                name: "kernel.shm_rmid_forced".into(),
                value: "1".into(),
            }],
            device_rules: vec![
                DeviceRule {
                    allow: false,
                    kind: DeviceKind::All,
                    major: None,
                    minor: None,
                    access: DeviceAccess::ALL,
                },
                DeviceRule {
                    allow: true,
                    kind: DeviceKind::Char,
                    major: Some(1),
                    minor: Some(3),
                    access: DeviceAccess {
                        read: true,
                        write: true,
                        mknod: false,
                    },
                },
                DeviceRule {
                    allow: true,
                    kind: DeviceKind::Char,
                    major: Some(136),
                    minor: None,
                    access: DeviceAccess::ALL,
                },
            ],
            rootfs_propagation: Some(PropagationChange {
                kind: crate::mount_options::Propagation::Slave,
                recursive: true,
            }),
        }
    }

    fn round_trip<M: Wire + PartialEq + std::fmt::Debug>(m: M) {
        let mut wire = Vec::new();
        write_msg(&mut wire, &m).unwrap();
        let back: M = read_msg(&mut &wire[..]).unwrap().unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn host_messages_round_trip() {
        round_trip(HostMsg::Run(Box::new(sample_run())));
        round_trip(HostMsg::Signal {
            signal: 15,
            all: true,
        });
        round_trip(HostMsg::Resize(ConsoleSize { rows: 1, cols: 2 }));
        round_trip(HostMsg::StdinClose {
            total_bytes: 1 << 40,
        });
        round_trip(HostMsg::Start);
        round_trip(HostMsg::ExitAck);
        round_trip(HostMsg::Update(Update {
            memory_bytes: Some(Limit::Amount(64 << 20)),
            pids: Some(Limit::Unlimited),
        }));
        round_trip(HostMsg::Update(Update::default()));
    }

    fn sample_identity() -> Identity {
        Identity::new(
            (0..64).collect(),
            1_700_000_000_123_456_789,
            "t-vm_1.a".into(),
        )
        .unwrap()
    }

    #[test]
    fn identity_round_trips() {
        round_trip(HostMsg::Identity(sample_identity()));
        for len in [MIN_ENTROPY_LEN, MAX_ENTROPY_LEN] {
            round_trip(HostMsg::Identity(
                Identity::new(vec![7; len], 1, "a".repeat(MAX_VM_ID_LEN)).unwrap(),
            ));
        }
        round_trip(GuestMsg::Identified { uptime_ns: 0 });
        round_trip(GuestMsg::Identified {
            uptime_ns: u64::MAX,
        });
    }

    fn rejects_identity(edit: impl FnOnce(&mut pb::Identity), field: &str) {
        let i = sample_identity();
        let mut p = pb::Identity {
            entropy: i.entropy.clone(),
            realtime_ns: i.realtime_ns,
            vm_id: i.vm_id.clone(),
            ..Default::default()
        };
        edit(&mut p);
        let m = pb::HostMessage {
            kind: Some(pb::host_message::Kind::Identity(p)),
            ..Default::default()
        };
        let bytes = m.write_to_bytes().unwrap();
        match HostMsg::decode(&bytes) {
            Err(ProtocolError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected invalid {field}, got {other:?}"),
        }
    }

    #[test]
    fn invalid_identities_are_refused() {
        for len in [0, 1, MIN_ENTROPY_LEN - 1, MAX_ENTROPY_LEN + 1, 4096] {
            rejects_identity(|i| i.entropy = vec![1; len], "identity.entropy");
        }
        rejects_identity(|i| i.realtime_ns = 0, "identity.realtime_ns");
        for bad in [
            "".to_string(),
            "a".repeat(MAX_VM_ID_LEN + 1),
            ".hidden".into(),
            ".".into(),
            "..".into(),
            "a/b".into(),
            "a\0b".into(),
            "a b".into(),
            "a,b".into(),
            "é".into(),
            "a\x1b[2J".into(),
        ] {
            rejects_identity(|i| i.vm_id = bad, "identity.vm_id");
        }
        // The constructor holds the same rules.
        assert!(Identity::new(vec![0; 31], 1, "a".into()).is_err());
        assert!(Identity::new(vec![0; 32], 0, "a".into()).is_err());
        assert!(Identity::new(vec![0; 32], 1, "-a.b_C9".into()).is_ok());
    }

    #[test]
    fn an_identity_never_shows_its_entropy() {
        let i = Identity::new(vec![0xab; 64], 5, "vm".into()).unwrap();
        let shown = format!("{:?}", HostMsg::Identity(i));
        assert!(!shown.contains("171") && !shown.contains("ab, "), "{shown}");
        assert!(
            shown.contains("<64 bytes>") && shown.contains("vm"),
            "{shown}"
        );
        assert_eq!(HostMsg::Identity(sample_identity()).name(), "Identity");
    }

    #[test]
    fn prepared_and_updated_are_bounded() {
        round_trip(GuestMsg::Prepared {
            path: "/bin/sh".into(),
        });
        round_trip(GuestMsg::Updated { error: None });
        round_trip(GuestMsg::Updated {
            error: Some("memory.max: busy".into()),
        });
        let long = GuestMsg::Prepared {
            path: "/".repeat(MAX_PATH_LEN + 1),
        };
        let mut wire = Vec::new();
        write_msg(&mut wire, &long).unwrap();
        assert!(read_msg::<_, GuestMsg>(&mut &wire[..]).is_err());
        let chatty = GuestMsg::Updated {
            error: Some("é".repeat(MAX_MESSAGE_LEN)),
        };
        let mut wire = Vec::new();
        write_msg(&mut wire, &chatty).unwrap();
        match read_msg::<_, GuestMsg>(&mut &wire[..]).unwrap().unwrap() {
            GuestMsg::Updated { error: Some(e) } => {
                assert!(
                    e.len() <= MAX_MESSAGE_LEN + crate::text::CUT_MARKER.len(),
                    "{}",
                    e.len()
                );
                assert!(e.ends_with(crate::text::CUT_MARKER));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn guest_messages_round_trip() {
        round_trip(GuestMsg::Ready(Ready {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            kernel_release: "6.1.0".into(),
            uptime_ns: 123,
        }));
        round_trip(GuestMsg::Started { pid: 7 });
        round_trip(GuestMsg::StartFailed {
            reason: StartFailReason::NotFound,
            message: "nope".into(),
        });
        round_trip(GuestMsg::Exit(Exit {
            status: 137,
            signal: Some(9),
            oom_killed: true,
            stdout_bytes: 5,
            stderr_bytes: 0,
        }));
    }

    fn rejects(r: Run, field: &str) {
        let bytes = HostMsg::Run(Box::new(r)).encode().unwrap();
        match HostMsg::decode(&bytes) {
            Err(ProtocolError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected invalid {field}, got {other:?}"),
        }
    }

    #[test]
    fn invalid_runs_are_refused() {
        let mut r = sample_run();
        r.process.args.clear();
        rejects(r, "process.args");
        let mut r = sample_run();
        r.process.cwd = "relative".into();
        rejects(r, "process.cwd");
        let mut r = sample_run();
        r.process.env.push("NOEQUALS".into());
        rejects(r, "process.env");
        let mut r = sample_run();
        r.process.args.push("a\0b".into());
        rejects(r, "process.args");
        let mut r = sample_run();
        r.mounts[0].destination = "data".into();
        rejects(r, "mount.destination");
        let mut r = sample_run();
        r.root.share_tag.clear();
        rejects(r, "run.root.share_tag");
        for bad in ["..", "a/b", "."] {
            let mut r = sample_run();
            r.root.share_subdir = Some(bad.into());
            rejects(r, "run.root.share_subdir");
        }
        let mut r = sample_run();
        r.mounts[1].share_file = Some("../etc/shadow".into());
        rejects(r, "mount.share_file");
        let mut r = sample_run();
        r.mounts[2].share_file = Some("x".into());
        rejects(r, "mount.share_file");
        let mut r = sample_run();
        r.mounts[0].options.push("size=1m".into());
        rejects(r, "mount.options");
        let mut r = sample_run();
        r.mounts[2].options.push("idmap".into());
        rejects(r, "mount.options");
        let mut r = sample_run();
        r.process.oom_score_adj = Some(1001);
        rejects(r, "process.oom_score_adj");
        let mut r = sample_run();
        r.masked_paths.push("proc/kcore".into());
        rejects(r, "run.masked_paths");
        let mut r = sample_run();
        r.readonly_paths.push("sys".into());
        rejects(r, "run.readonly_paths");
        for bad in ["", "net..ipv4", "../etc", "net/ipv4", ".kernel"] {
            let mut r = sample_run();
            r.sysctls[0].name = bad.into();
            rejects(r, "run.sysctls");
        }
    }

    fn rejects_pb(edit: impl FnOnce(&mut pb::Run), field: &str) {
        let mut r: pb::Run = (&sample_run()).into();
        edit(&mut r);
        match Run::try_from(r) {
            Err(ProtocolError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected invalid {field}, got {other:?}"),
        }
    }

    #[test]
    fn seccomp_programs_are_whole_bounded_and_known_flagged() {
        rejects_pb(
            |r| r.process.as_mut().unwrap().seccomp_filter.push(0),
            "process.seccomp_filter",
        );
        rejects_pb(
            |r| r.process.as_mut().unwrap().seccomp_filter = vec![0; 8 * 4097],
            "process.seccomp_filter",
        );
        rejects_pb(
            |r| r.process.as_mut().unwrap().seccomp_flags = 8,
            "process.seccomp_flags",
        );
        rejects_pb(
            |r| {
                let p = r.process.as_mut().unwrap();
                p.seccomp_filter.clear();
            },
            "process.seccomp_flags",
        );
        let f = SeccompFilter::new(vec![0; 8 * 4096], 1 | 2 | 4).unwrap();
        assert_eq!(f.instructions(), 4096);
        assert!(SeccompFilter::new(Vec::new(), 0).is_err());
    }

    #[test]
    fn device_rules_are_bounded_and_typed() {
        rejects_pb(
            |r| r.device_rules[0].kind = EnumOrUnknown::from_i32(0),
            "run.device_rules.kind",
        );
        rejects_pb(
            |r| {
                let rule = r.device_rules[0].clone();
                r.device_rules = vec![rule; MAX_DEVICE_RULES + 1];
            },
            "run.device_rules",
        );
        rejects_pb(
            |r| r.rootfs_propagation = "sideways".into(),
            "run.rootfs_propagation",
        );
    }

    #[test]
    fn a_process_without_capabilities_has_none() {
        let mut r = sample_run();
        r.process.capabilities = Capabilities::default();
        r.process.seccomp = None;
        let pb: pb::Run = (&r).into();
        assert!(pb.process.capabilities.is_none());
        assert!(pb.process.seccomp_filter.is_empty());
        assert_eq!(Run::try_from(pb).unwrap(), r);
    }

    #[test]
    fn bad_signal_and_status_are_refused() {
        let bytes = HostMsg::Signal {
            signal: 65,
            all: false,
        }
        .encode()
        .unwrap();
        assert!(HostMsg::decode(&bytes).is_err());
        let bytes = GuestMsg::Exit(Exit {
            status: 300,
            signal: None,
            oom_killed: false,
            stdout_bytes: 0,
            stderr_bytes: 0,
        })
        .encode()
        .unwrap();
        assert!(GuestMsg::decode(&bytes).is_err());
    }

    #[test]
    fn guest_text_is_sanitised_on_decode() {
        let bytes = GuestMsg::StartFailed {
            reason: StartFailReason::Setup,
            message: format!(
                "chdir \x1b]0;owned\x07/\x1b[2J: no such file{}",
                "x".repeat(5000)
            ),
        }
        .encode()
        .unwrap();
        match GuestMsg::decode(&bytes).unwrap() {
            GuestMsg::StartFailed { message, .. } => {
                assert!(
                    !message.contains('\x1b') && !message.contains('\x07'),
                    "{message:?}"
                );
                assert!(
                    message.starts_with("chdir \\x1b]0;owned\\x07/\\x1b[2J"),
                    "{message:?}"
                );
                assert!(message.len() <= MAX_MESSAGE_LEN + crate::text::CUT_MARKER.len());
                assert!(message.ends_with(crate::text::CUT_MARKER));
            }
            other => panic!("{other:?}"),
        }
        let bytes = GuestMsg::Ready(Ready {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "1\x1b[31m".into(),
            kernel_release: "6.1\r".into(),
            uptime_ns: 0,
        })
        .encode()
        .unwrap();
        match GuestMsg::decode(&bytes).unwrap() {
            GuestMsg::Ready(r) => {
                assert_eq!(r.agent_version, "1\\x1b[31m");
                assert_eq!(r.kernel_release, "6.1\\x0d");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_message_is_refused() {
        assert!(HostMsg::decode(&[]).is_err());
        assert!(GuestMsg::decode(&[]).is_err());
    }

    #[test]
    fn version_mismatch_is_refused() {
        let r = Ready {
            protocol_version: PROTOCOL_VERSION + 1,
            agent_version: String::new(),
            kernel_release: String::new(),
            uptime_ns: 0,
        };
        assert!(matches!(
            check_version(&r),
            Err(ProtocolError::Version { .. })
        ));
    }

    /// Deterministic fuzz of the decoders: arbitrary bytes never panic.
    #[test]
    fn random_bytes_never_panic_decoders() {
        let mut state: u64 = 0xdead_beef_cafe_f00d;
        let valid = HostMsg::Run(Box::new(sample_run())).encode().unwrap();
        for i in 0..5000 {
            let mut bytes = if i % 2 == 0 {
                valid.clone()
            } else {
                vec![0u8; (xorshift(&mut state) % 128) as usize]
            };
            for _ in 0..(1 + xorshift(&mut state) % 8) {
                if bytes.is_empty() {
                    break;
                }
                let at = (xorshift(&mut state) as usize) % bytes.len();
                bytes[at] = xorshift(&mut state) as u8;
            }
            let _ = HostMsg::decode(&bytes);
            let _ = GuestMsg::decode(&bytes);
        }
    }

    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }
}
