//! The control loop while the container runs: signals, window size, the end
//! of stdin, new limits and, after `Exit`, the host's acknowledgement, from
//! the host's control port.
//!
//! Runs in its own thread; the main thread waits for the process and sends
//! `Exit`. If the host goes away (EOF or a broken frame on the control port)
//! nobody can receive the exit status any more: the container is killed and
//! the agent exits, which powers the VM off.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use mu2_protocol::{read_msg, HostMsg, ProtocolError};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::stdio::StdinControl;

/// What the control loop acts on.
pub struct Target {
    pub pid: Pid,
    /// The pty master when the process has a terminal.
    pub pty: Option<Arc<File>>,
    pub stdin: StdinControl,
    /// The container's cgroup, for Update.
    pub cgroup: crate::cgroup::Cgroup,
    /// The control port's writing end, for Updated.
    pub out: crate::Shared,
    /// Told when the host acknowledged the exit.
    pub acked: std::sync::mpsc::Sender<()>,
}

pub fn spawn(mut control: File, target: Target) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || run(&mut control, &target))
}

fn run(control: &mut File, target: &Target) {
    loop {
        let msg = match read_msg::<_, HostMsg>(control) {
            Ok(Some(m)) => m,
            Ok(None) => return host_gone(target, "the host closed the control port"),
            Err(ProtocolError::Frame(e)) => {
                return host_gone(target, &format!("control port: {e}"))
            }
            Err(e) => {
                crate::log_error(&format!("ignoring a bad control message: {e}"));
                continue;
            }
        };
        crate::log_debug(&format!("control: {msg:?}"));
        match msg {
            HostMsg::Signal { signal, all } => deliver(target.pid, signal, all),
            HostMsg::Resize(size) => {
                if let Some(pty) = &target.pty {
                    if let Err(e) = crate::sys::set_winsize(pty.as_fd(), size.rows, size.cols) {
                        crate::log_error(&format!("resizing the terminal: {e}"));
                    }
                }
            }
            HostMsg::StdinClose { total_bytes } => target.stdin.close_at(total_bytes),
            HostMsg::Update(u) => {
                let error = target.cgroup.update(&u).err().map(|e| crate::chain(&e));
                let reply = mu2_protocol::GuestMsg::Updated { error };
                let mut out = target.out.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = mu2_protocol::write_msg(&mut *out, &reply) {
                    crate::log_error(&format!("cannot answer an update: {e}"));
                }
            }
            HostMsg::ExitAck => {
                let _ = target.acked.send(());
            }
            HostMsg::Run(_) | HostMsg::Start => {
                crate::log_error("ignoring a second Run or Start: one process per VM")
            }
            HostMsg::Identity(_) => {
                crate::log_error("ignoring a second Identity: a VM has one, given first")
            }
        }
    }
}

fn host_gone(target: &Target, why: &str) {
    crate::log_error(&format!("{why}; killing the container"));
    let _ = kill(target.pid, Signal::SIGKILL);
    std::process::exit(1);
}

/// Sends `signal` to the process, or to every process of its PID namespace.
pub fn deliver(pid: Pid, signal: i32, all: bool) {
    // Killing the namespace's init kills the whole namespace.
    if !all || signal == Signal::SIGKILL as i32 {
        if let Err(e) = crate::sys::kill_raw(pid, signal) {
            if e != Errno::ESRCH {
                crate::log_error(&format!("kill {pid} {signal}: {e}"));
            }
        }
        return;
    }
    for p in namespace_members(Path::new("/proc"), pid) {
        let _ = crate::sys::kill_raw(p, signal);
    }
}

/// Every pid in `proc` whose PID namespace is the one `init` leads.
pub fn namespace_members(proc: &Path, init: Pid) -> Vec<Pid> {
    let Ok(ns) = std::fs::read_link(proc.join(init.to_string()).join("ns/pid")) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_link(proc.join(p.to_string()).join("ns/pid"))
                .ok()
                .as_ref()
                == Some(&ns)
        })
        .map(Pid::from_raw)
        .collect()
}
