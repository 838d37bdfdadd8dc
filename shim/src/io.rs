//! containerd's stdio FIFOs and the relays between them and a VM's stdio
//! ports.
//!
//! Output FIFOs are opened in Create without ever blocking: write-only when
//! containerd already reads them (it opens its ends before Create), else
//! read-write so that the open cannot wait for a reader that may never come.
//! The stdin FIFO is opened by its relay thread, blocking, as runc's shim
//! does: the open returns when containerd's writer is there, so an EOF read
//! afterwards is a real end of input. `CloseIO` ends stdin even while
//! containerd keeps its end open: the relay polls, and once told to close it
//! drains what is buffered and stops. Either way the agent learns the end of
//! stdin with the byte count (`StdinClose`).
//!
//! Relays use blocking I/O, so back-pressure runs end to end as in `mu2
//! run`: a slow reader of a FIFO stalls the relay, QEMU and the guest.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use mu2_microvm::vm::ControlSender;
use mu2_protocol::HostMsg;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::ShimError;

/// How often a stdin relay looks whether it was told to close.
const STDIN_POLL_MS: u16 = 100;
const RELAY_BUF: usize = 64 * 1024;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ShimError + '_ {
    move |source| ShimError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens an output FIFO without blocking; `None` for an empty path (null
/// IO).
pub fn open_output(path: &str) -> Result<Option<File>, ShimError> {
    if path.is_empty() {
        return Ok(None);
    }
    let p = Path::new(path);
    let file = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)
    {
        Ok(f) => f,
        // ENXIO: no reader yet.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(p)
            .map_err(io_err(p))?,
        Err(e) => return Err(io_err(p)(e)),
    };
    set_blocking(&file).map_err(io_err(p))?;
    Ok(Some(file))
}

fn set_blocking(f: &File) -> io::Result<()> {
    let flags = fcntl(f.as_raw_fd(), FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
    fcntl(f.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// Copies a VM output stream to its FIFO until the VM closes the stream;
/// returns the bytes received. A FIFO whose reader went away (or none) still
/// has the stream drained, so that the guest never blocks for good.
pub fn spawn_output_relay(mut from: UnixStream, mut to: Option<File>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut total: u64 = 0;
        let mut buf = vec![0u8; RELAY_BUF];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n as u64;
                    if let Some(f) = to.as_mut() {
                        if f.write_all(&buf[..n]).is_err() {
                            to = None;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        // Dropping the FIFO here is what tells containerd the output ended.
        drop(to);
        total
    })
}

/// Tells a stdin relay to finish: drain what is buffered, then close.
#[derive(Clone, Default)]
pub struct StdinCloser {
    closing: Arc<AtomicBool>,
    path: Option<PathBuf>,
}

impl StdinCloser {
    pub fn new(path: &str) -> StdinCloser {
        StdinCloser {
            closing: Arc::default(),
            path: (!path.is_empty()).then(|| PathBuf::from(path)),
        }
    }

    pub fn close(&self) {
        if self.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        // A relay still blocked opening the FIFO (no writer ever came) is
        // released by a writer that comes and goes.
        if let Some(p) = &self.path {
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(p);
        }
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }
}

/// Relays the stdin FIFO to the VM; at its end sends `StdinClose` with the
/// byte count. Must be started only after `Run` was sent. With no FIFO the
/// process gets an empty stdin at once.
pub fn spawn_stdin_relay(mut to: UnixStream, closer: StdinCloser, sender: ControlSender) {
    let Some(path) = closer.path.clone() else {
        let _ = sender.send(&HostMsg::StdinClose { total_bytes: 0 });
        return;
    };
    std::thread::spawn(move || {
        let mut total: u64 = 0;
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path);
        match opened {
            Ok(mut fifo) => {
                let mut buf = vec![0u8; RELAY_BUF];
                loop {
                    let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, PollTimeout::from(STDIN_POLL_MS)) {
                        Ok(0) => {
                            if closer.is_closing() {
                                break;
                            }
                            continue;
                        }
                        Ok(_) => {}
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(_) => break,
                    }
                    match fifo.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if to.write_all(&buf[..n]).is_err() {
                                // The VM is gone: nothing more to deliver.
                                return;
                            }
                            total += n as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
            }
            Err(e) => log::warn!("cannot open stdin fifo {}: {e}", path.display()),
        }
        let _ = sender.send(&HostMsg::StdinClose { total_bytes: total });
    });
}
