//! The QEMU `microvm` command line, one small struct per option.
//!
//! Each option renders its own `-flag value` pairs so that unit tests can
//! assert them one by one. Design points:
//! - `-nodefaults -no-user-config`: no device or config file we did not ask
//!   for; `-no-reboot` plus the guest's `panic=-1` make any guest reboot or
//!   panic end QEMU.
//! - ACPI stays on (microvm's default): with `acpi=off` virtio-mmio devices
//!   are announced only on the kernel command line, which modules loaded by
//!   hand never read.
//! - Every chardev is a socketpair end passed by fd number: nothing is
//!   created on the filesystem, so nothing can be left behind there.
//! - TCG gets a small translation cache and `tsc_early_khz` (see
//!   [`crate::accel::host_tsc_khz`]).

use std::os::fd::RawFd;
use std::path::Path;

use crate::accel::Accel;
use crate::spec::VmSpec;

/// A piece of the command line.
pub trait QemuOption {
    fn args(&self) -> Vec<String>;
}

/// QEMU splits option values on ','; a literal comma is written twice.
pub fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn path(p: &Path) -> String {
    escape(&p.to_string_lossy())
}

pub struct Machine {
    pub ram: GuestRam,
}
impl QemuOption for Machine {
    fn args(&self) -> Vec<String> {
        // Defaults kept on purpose: isa-serial carries the console; the PIT
        // and PIC serve TCG's timer set-up; and the RTC stays — `rtc=off`
        // was measured to cost ~1 s of guest boot under TCG.
        match self.ram {
            GuestRam::Anonymous => vec!["-M".into(), "microvm".into()],
            GuestRam::File { .. } => {
                vec!["-M".into(), format!("microvm,memory-backend={RAM_BACKEND}")]
            }
        }
    }
}

/// The id of the memory backend of a VM whose RAM is a file.
const RAM_BACKEND: &str = "ram";

/// Where a VM's guest RAM lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestRam {
    /// QEMU's own anonymous memory (every booted VM, every clone of a
    /// template whose RAM is in its stream).
    Anonymous,
    /// An inherited file descriptor (a shared template's memfd), opened by
    /// QEMU through `/proc/self/fd/N`: `shared` (the template's own VM,
    /// writing it) or copy-on-write (a clone: its writes stay its own).
    File { fd: RawFd, shared: bool },
}

/// The memory backend of [`GuestRam::File`] (nothing for anonymous RAM).
pub struct RamBackend {
    pub ram: GuestRam,
    pub memory_mib: u32,
}
impl QemuOption for RamBackend {
    fn args(&self) -> Vec<String> {
        match self.ram {
            GuestRam::Anonymous => Vec::new(),
            GuestRam::File { fd, shared } => vec![
                "-object".into(),
                format!(
                    "memory-backend-file,id={RAM_BACKEND},size={}M,mem-path=/proc/self/fd/{fd},share={}",
                    self.memory_mib,
                    if shared { "on" } else { "off" }
                ),
            ],
        }
    }
}

pub struct AccelOpt {
    pub accel: Accel,
    pub tb_size_mib: u32,
}
impl QemuOption for AccelOpt {
    fn args(&self) -> Vec<String> {
        match self.accel {
            Accel::Kvm => vec!["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()],
            Accel::Tcg => vec!["-accel".into(), format!("tcg,tb-size={}", self.tb_size_mib)],
        }
    }
}

pub struct Resources {
    pub memory_mib: u32,
    pub vcpus: u32,
}
impl QemuOption for Resources {
    fn args(&self) -> Vec<String> {
        vec![
            "-m".into(),
            format!("{}M", self.memory_mib),
            "-smp".into(),
            self.vcpus.to_string(),
        ]
    }
}

pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: String,
}
impl QemuOption for Boot<'_> {
    fn args(&self) -> Vec<String> {
        vec![
            "-kernel".into(),
            path(self.kernel),
            "-initrd".into(),
            path(self.initrd),
            "-append".into(),
            self.cmdline.clone(),
        ]
    }
}

/// A socket chardev on an inherited, already connected fd.
pub struct FdChardev<'a> {
    pub id: &'a str,
    pub fd: RawFd,
}
impl QemuOption for FdChardev<'_> {
    fn args(&self) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,id={},fd={}", self.id, self.fd),
        ]
    }
}

/// The guest console on the microvm's ISA serial port (ttyS0).
pub struct SerialConsole<'a> {
    pub chardev: &'a str,
}
impl QemuOption for SerialConsole<'_> {
    fn args(&self) -> Vec<String> {
        vec!["-serial".into(), format!("chardev:{}", self.chardev)]
    }
}

pub struct VirtioSerialBus;
impl QemuOption for VirtioSerialBus {
    fn args(&self) -> Vec<String> {
        vec!["-device".into(), "virtio-serial-device,max_ports=8".into()]
    }
}

/// A named virtio-serial port; the guest finds it by this name.
pub struct SerialPort<'a> {
    pub chardev: &'a str,
    pub name: &'a str,
}
impl QemuOption for SerialPort<'_> {
    fn args(&self) -> Vec<String> {
        vec![
            "-device".into(),
            format!("virtserialport,chardev={},name={}", self.chardev, self.name),
        ]
    }
}

/// A host directory exported over virtio-9p.
pub struct NinePShare<'a> {
    pub index: usize,
    pub tag: &'a str,
    pub host_path: &'a Path,
    pub readonly: bool,
}
impl QemuOption for NinePShare<'_> {
    fn args(&self) -> Vec<String> {
        let id = format!("fs{}", self.index);
        // security_model=none: the guest sees the files' real owners and
        // modes, as a container sees its image; the VMM never chowns.
        // multidevs=remap: a share may span file systems (a pooled VM's
        // image is mounted under its share; a volume may hold mounts), and
        // inode numbers of two file systems must not meet in the guest.
        let mut fsdev = format!(
            "local,id={id},path={},security_model=none,multidevs=remap",
            path(self.host_path)
        );
        if self.readonly {
            fsdev.push_str(",readonly=on");
        }
        vec![
            "-fsdev".into(),
            fsdev,
            "-device".into(),
            format!("virtio-9p-device,fsdev={id},mount_tag={}", self.tag),
        ]
    }
}

/// Inherited fds of the VM's channels, as numbered in the QEMU process.
#[derive(Debug, Clone, Copy)]
pub struct ChannelFds {
    pub console: RawFd,
    pub control: RawFd,
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// A QMP monitor on a socketpair: a template's build drives its
    /// migration through it ([`crate::qmp`]).
    pub qmp: Option<RawFd>,
    /// How a clone comes in (`-incoming`); `None` for a boot.
    pub incoming: Option<Incoming>,
    pub ram: GuestRam,
}

/// A QMP monitor on an inherited, connected socket.
pub struct QmpChannel {
    pub fd: RawFd,
}
impl QemuOption for QmpChannel {
    fn args(&self) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,id=qmp,fd={}", self.fd),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
        ]
    }
}

/// Start from a migration stream instead of booting: the guest resumes
/// where the template stopped (it was running then, so the clone starts
/// running once the stream is loaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// At once, from an inherited fd.
    Fd(RawFd),
    /// When QMP says so (`migrate-incoming`), after the capabilities the
    /// stream needs are set: a stream saved with `x-ignore-shared` must be
    /// read with it too, and QEMU 7.2 takes capabilities only over QMP.
    Defer,
}
impl QemuOption for Incoming {
    fn args(&self) -> Vec<String> {
        let from = match self {
            Incoming::Fd(fd) => format!("fd:{fd}"),
            Incoming::Defer => "defer".into(),
        };
        vec!["-incoming".into(), from]
    }
}

/// The guest kernel's command line.
pub fn kernel_cmdline(spec: &VmSpec, tsc_khz: Option<u64>) -> String {
    let mut c = vec!["console=ttyS0".to_string(), "panic=-1".into()];
    if spec.debug {
        c.push("mu2.debug=1".into());
    } else {
        c.push("quiet".into());
    }
    if spec.accel == Accel::Tcg {
        if let Some(khz) = tsc_khz {
            c.push(format!("tsc_early_khz={khz}"));
        }
    }
    c.join(" ")
}

/// QEMU's built-in seccomp sandbox, everything denied that it can deny.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The QMP socket of a jailed VM, inside its jail.
pub const QMP_SOCKET: &str = "/run/qmp.sock";

/// QMP, the machine protocol, on a unix socket QEMU listens on.
pub struct Qmp<'a> {
    pub socket: &'a Path,
}
impl QemuOption for Qmp<'_> {
    fn args(&self) -> Vec<String> {
        vec![
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", path(self.socket)),
        ]
    }
}

/// Files QEMU reads besides its libraries: the microvm firmware and the
/// PVH option ROM, and (TCG) the accelerator module. Only those present.
pub fn data_files(qemu: &Path, accel: Accel) -> Vec<std::path::PathBuf> {
    let Some(prefix) = qemu
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().and_then(|d| d.parent()).map(Path::to_path_buf))
    else {
        return Vec::new();
    };
    let mut files = vec![
        prefix.join("share/qemu/bios-microvm.bin"),
        prefix.join("share/qemu/pvh.bin"),
    ];
    if accel == Accel::Tcg {
        files.push(prefix.join("lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so"));
    }
    files.retain(|f| f.is_file());
    files
}

/// The complete argument list (without the program name). `qmp`: a QMP
/// socket path (jailed VMs only).
pub fn command_line(
    spec: &VmSpec,
    fds: ChannelFds,
    tsc_khz: Option<u64>,
    qmp: Option<&Path>,
) -> Vec<String> {
    use mu2_protocol::port;
    let name = format!("mu2-{}", spec.id);
    let mut opts: Vec<Box<dyn QemuOption + '_>> = vec![
        Box::new(Machine { ram: fds.ram }),
        Box::new(AccelOpt {
            accel: spec.accel,
            tb_size_mib: spec.tb_size_mib,
        }),
        Box::new(Resources {
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
        }),
        Box::new(RamBackend {
            ram: fds.ram,
            memory_mib: spec.memory_mib,
        }),
        Box::new(Boot {
            kernel: &spec.kernel,
            initrd: &spec.initrd,
            cmdline: kernel_cmdline(spec, tsc_khz),
        }),
        Box::new(FdChardev {
            id: "console",
            fd: fds.console,
        }),
        Box::new(SerialConsole { chardev: "console" }),
        Box::new(VirtioSerialBus),
    ];
    for (id, fd, name) in [
        ("control", fds.control, port::CONTROL),
        ("stdin", fds.stdin, port::STDIN),
        ("stdout", fds.stdout, port::STDOUT),
        ("stderr", fds.stderr, port::STDERR),
    ] {
        opts.push(Box::new(FdChardev { id, fd }));
        opts.push(Box::new(SerialPort { chardev: id, name }));
    }
    for (index, s) in spec.shares.iter().enumerate() {
        opts.push(Box::new(NinePShare {
            index,
            tag: &s.tag,
            host_path: &s.host_path,
            readonly: s.readonly,
        }));
    }
    let mut args: Vec<String> = vec![
        "-name".into(),
        name,
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        // QEMU's own seccomp filter: no obsolete syscalls, no setuid or
        // privilege changes, no fork/exec, no scheduler or resource tweaks.
        "-sandbox".into(),
        SANDBOX.into(),
    ];
    if let Some(socket) = qmp {
        opts.push(Box::new(Qmp { socket }));
    }
    if let Some(fd) = fds.qmp {
        opts.push(Box::new(QmpChannel { fd }));
    }
    if let Some(incoming) = fds.incoming {
        opts.push(Box::new(incoming));
    }
    for o in opts {
        args.extend(o.args());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::spec;

    const FDS: ChannelFds = ChannelFds {
        console: 10,
        control: 11,
        stdin: 12,
        stdout: 13,
        stderr: 14,
        qmp: None,
        incoming: None,
        ram: GuestRam::Anonymous,
    };

    fn has_pair(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn machine_and_hygiene_flags() {
        let a = command_line(&spec(), FDS, None, None);
        assert!(has_pair(&a, "-M", "microvm"));
        assert!(has_pair(&a, "-name", "mu2-t1"));
        assert!(has_pair(
            &a,
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ));
        for f in ["-nodefaults", "-no-user-config", "-no-reboot", "-nographic"] {
            assert!(a.iter().any(|x| x == f), "{f} missing");
        }
        assert!(!a.iter().any(|x| x.contains("acpi=off")));
    }

    #[test]
    fn tcg_gets_a_small_translation_cache_and_the_tsc_hint() {
        let s = spec();
        let a = command_line(&s, FDS, Some(2_793_436), None);
        assert!(has_pair(&a, "-accel", "tcg,tb-size=64"));
        let cmdline = kernel_cmdline(&s, Some(2_793_436));
        assert!(cmdline.contains("tsc_early_khz=2793436"));
        assert!(has_pair(&a, "-append", &cmdline));
    }

    #[test]
    fn kvm_uses_the_host_cpu_and_no_tsc_hint() {
        let mut s = spec();
        s.accel = Accel::Kvm;
        let a = command_line(&s, FDS, Some(1000), None);
        assert!(has_pair(&a, "-accel", "kvm"));
        assert!(has_pair(&a, "-cpu", "host"));
        assert!(!kernel_cmdline(&s, Some(1000)).contains("tsc_early_khz"));
    }

    #[test]
    fn resources_and_boot() {
        let mut s = spec();
        s.memory_mib = 160;
        s.vcpus = 2;
        let a = command_line(&s, FDS, None, None);
        assert!(has_pair(&a, "-m", "160M"));
        assert!(has_pair(&a, "-smp", "2"));
        assert!(has_pair(&a, "-kernel", "/guest/vmlinux"));
        assert!(has_pair(&a, "-initrd", "/guest/initrd.img"));
    }

    #[test]
    fn channels_are_inherited_fds_on_named_ports() {
        let a = command_line(&spec(), FDS, None, None);
        assert!(has_pair(&a, "-chardev", "socket,id=console,fd=10"));
        assert!(has_pair(&a, "-serial", "chardev:console"));
        assert!(has_pair(&a, "-chardev", "socket,id=control,fd=11"));
        assert!(has_pair(
            &a,
            "-device",
            "virtserialport,chardev=control,name=mu2.control"
        ));
        assert!(has_pair(
            &a,
            "-device",
            "virtserialport,chardev=stderr,name=mu2.stderr"
        ));
    }

    #[test]
    fn shares_escape_commas_and_honour_readonly() {
        let mut s = spec();
        s.shares = vec![crate::spec::Share {
            tag: "vol0".into(),
            host_path: "/srv/a,b".into(),
            readonly: false,
        }];
        let a = command_line(&s, FDS, None, None);
        assert!(has_pair(
            &a,
            "-fsdev",
            "local,id=fs0,path=/srv/a,,b,security_model=none,multidevs=remap"
        ));
        assert!(has_pair(
            &a,
            "-device",
            "virtio-9p-device,fsdev=fs0,mount_tag=vol0"
        ));
        let a = command_line(&spec(), FDS, None, None);
        assert!(has_pair(
            &a,
            "-fsdev",
            "local,id=fs0,path=/,security_model=none,multidevs=remap,readonly=on"
        ));
    }

    #[test]
    fn qmp_is_a_unix_socket_only_when_asked() {
        let a = command_line(&spec(), FDS, None, None);
        assert!(!a.iter().any(|x| x == "-qmp"));
        let a = command_line(&spec(), FDS, None, Some(Path::new(QMP_SOCKET)));
        let i = a.iter().position(|x| x == "-qmp").unwrap();
        assert_eq!(a[i + 1], "unix:/run/qmp.sock,server=on,wait=off");
    }

    #[test]
    fn a_template_gets_a_qmp_channel_and_a_clone_its_incoming_stream() {
        let a = command_line(&spec(), FDS, None, None);
        assert!(!a.iter().any(|x| x == "-incoming" || x == "-mon"));
        let fds = ChannelFds {
            qmp: Some(20),
            incoming: Some(Incoming::Fd(21)),
            ..FDS
        };
        let a = command_line(&spec(), fds, None, None);
        assert!(has_pair(&a, "-chardev", "socket,id=qmp,fd=20"));
        assert!(has_pair(&a, "-mon", "chardev=qmp,mode=control"));
        assert!(has_pair(&a, "-incoming", "fd:21"));
    }

    #[test]
    fn guest_ram_in_a_file_is_shared_by_its_template_and_private_to_a_clone() {
        let a = command_line(&spec(), FDS, None, None);
        assert!(has_pair(&a, "-M", "microvm"));
        assert!(!a.iter().any(|x| x == "-object"));
        let mut s = spec();
        s.memory_mib = 192;
        for (shared, share) in [(true, "on"), (false, "off")] {
            let fds = ChannelFds {
                ram: GuestRam::File { fd: 30, shared },
                incoming: (!shared).then_some(Incoming::Defer),
                ..FDS
            };
            let a = command_line(&s, fds, None, None);
            assert!(has_pair(&a, "-M", "microvm,memory-backend=ram"));
            assert!(has_pair(
                &a,
                "-object",
                &format!(
                    "memory-backend-file,id=ram,size=192M,mem-path=/proc/self/fd/30,share={share}"
                )
            ));
            // The backend's size and -m agree (QEMU refuses otherwise).
            assert!(has_pair(&a, "-m", "192M"));
            assert_eq!(has_pair(&a, "-incoming", "defer"), !shared);
        }
    }
}
