//! Relaying the container's stdio over the raw virtio-serial ports.
//!
//! Each direction is one thread doing blocking reads and writes, so
//! back-pressure is end to end: a host that stops reading blocks the port
//! write, which blocks the relay, which fills the pipe, which blocks the
//! container. Bytes are copied untouched and counted; the counts go into
//! `Exit` so the host knows when it has all of them.
//!
//! stdin ends when the host says so: `StdinClose{total_bytes}` arrives on
//! the control port, possibly before or after the bytes themselves, and the
//! relay closes the container's stdin once it has forwarded exactly that
//! many. A wake-up pipe lets the control thread interrupt the relay's wait
//! on the port.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::pipe2;

use crate::spawn::ChildStdio;
use crate::sys;

const BUF: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("cannot create the {what} pipe")]
    Pipe {
        what: &'static str,
        #[source]
        source: Errno,
    },
    #[error("cannot open a terminal at {path}")]
    Pty {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot set the terminal size")]
    Winsize(#[source] Errno),
    #[error("cannot start the {what} relay thread")]
    Thread {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The agent's ends of the container's stdio pipes.
pub struct AgentPipes {
    pub stdin: File,
    pub stdout: File,
    pub stderr: File,
}

/// Three pipes: the container's ends and the agent's.
pub fn pipes() -> Result<(ChildStdio, AgentPipes), StdioError> {
    let pipe = |what| pipe2(OFlag::O_CLOEXEC).map_err(|source| StdioError::Pipe { what, source });
    let (in_r, in_w) = pipe("stdin")?;
    let (out_r, out_w) = pipe("stdout")?;
    let (err_r, err_w) = pipe("stderr")?;
    Ok((
        ChildStdio::Pipes {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
        },
        AgentPipes {
            stdin: in_w.into(),
            stdout: out_r.into(),
            stderr: err_r.into(),
        },
    ))
}

/// A pseudo-terminal made in the container's own devpts instance, so that
/// the process finds its terminal under /dev/pts inside the container.
pub struct Pty {
    pub master: File,
    pub slave: OwnedFd,
    /// The slave as the agent sees it (for the /dev/console bind).
    pub slave_path: PathBuf,
}

impl Pty {
    /// `pts`: the devpts directory holding `ptmx`.
    pub fn open(pts: &Path, rows: u16, cols: u16) -> Result<Pty, StdioError> {
        let ptmx = pts.join("ptmx");
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StdioError::Pty { path, source }
        };
        let master = open_tty(&ptmx).map_err(err(&ptmx))?;
        sys::unlock_pty(master.as_fd()).map_err(err(&ptmx))?;
        let n = sys::pty_number(master.as_fd()).map_err(err(&ptmx))?;
        let slave_path = pts.join(n.to_string());
        let slave = open_tty(&slave_path).map_err(err(&slave_path))?.into();
        if rows > 0 || cols > 0 {
            sys::set_winsize(master.as_fd(), rows, cols).map_err(StdioError::Winsize)?;
        }
        Ok(Pty {
            master,
            slave,
            slave_path,
        })
    }
}

fn open_tty(path: &Path) -> Result<File, Errno> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// Copies `src` to `dst` until `src` ends; returns the bytes written.
/// EIO on a pty master means every slave was closed: the end.
pub fn spawn_output_relay(
    what: &'static str,
    mut src: File,
    mut dst: File,
) -> Result<JoinHandle<u64>, StdioError> {
    std::thread::Builder::new()
        .name(format!("relay-{what}"))
        .spawn(move || {
            let mut buf = vec![0u8; BUF];
            let mut total = 0u64;
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                    Err(e) => {
                        crate::log_error(&format!("reading the container's {what}: {e}"));
                        break;
                    }
                };
                if let Err(e) = dst.write_all(&buf[..n]) {
                    crate::log_error(&format!("writing {what} to the host: {e}"));
                    break;
                }
                total += n as u64;
            }
            total
        })
        .map_err(|source| StdioError::Thread { what, source })
}

/// The control thread's handle on the stdin relay.
#[derive(Debug, Clone)]
pub struct StdinControl {
    limit: Arc<AtomicU64>,
    wake: Arc<File>,
}

impl StdinControl {
    /// stdin ends after `total` bytes.
    pub fn close_at(&self, total: u64) {
        self.limit.store(total, Ordering::SeqCst);
        let _ = (&*self.wake).write(&[1]);
    }
}

/// Forwards the stdin port to `dst` until the host's total is reached (or
/// the host goes away), then drops `dst`: the container reads EOF.
pub fn spawn_stdin_relay(
    mut port: File,
    dst: File,
) -> Result<(StdinControl, JoinHandle<()>), StdioError> {
    let (wake_r, wake_w) =
        pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|source| StdioError::Pipe {
            what: "stdin wake-up",
            source,
        })?;
    let limit = Arc::new(AtomicU64::new(u64::MAX));
    let control = StdinControl {
        limit: limit.clone(),
        wake: Arc::new(wake_w.into()),
    };
    let handle = std::thread::Builder::new()
        .name("relay-stdin".into())
        .spawn(move || {
            let mut wake = File::from(wake_r);
            let mut dst = Some(dst);
            let mut buf = vec![0u8; BUF];
            let mut forwarded = 0u64;
            loop {
                let limit = limit.load(Ordering::SeqCst);
                if forwarded >= limit {
                    break;
                }
                let mut fds = [
                    PollFd::new(port.as_fd(), PollFlags::POLLIN),
                    PollFd::new(wake.as_fd(), PollFlags::POLLIN),
                ];
                if let Err(e) = sys::retry(|| poll(&mut fds, PollTimeout::NONE)) {
                    crate::log_error(&format!("polling the stdin port: {e}"));
                    break;
                }
                let port_ready = fds[0].any().unwrap_or(false);
                if fds[1].any().unwrap_or(false) {
                    let mut sink = [0u8; 64];
                    while matches!(wake.read(&mut sink), Ok(n) if n > 0) {}
                }
                if !port_ready {
                    continue;
                }
                let want = (limit - forwarded).min(BUF as u64) as usize;
                let n = match port.read(&mut buf[..want]) {
                    Ok(0) => break, // the host closed the stream
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        crate::log_error(&format!("reading the stdin port: {e}"));
                        break;
                    }
                };
                forwarded += n as u64;
                if let Some(d) = dst.as_mut() {
                    if let Err(e) = d.write_all(&buf[..n]) {
                        // The container closed its stdin: keep draining the
                        // port so the host never blocks on it.
                        if e.kind() != ErrorKind::BrokenPipe {
                            crate::log_error(&format!("writing the container's stdin: {e}"));
                        }
                        dst = None;
                    }
                }
            }
            crate::log_debug(&format!("stdin closed after {forwarded} bytes"));
        })
        .map_err(|source| StdioError::Thread {
            what: "stdin",
            source,
        })?;
    Ok((control, handle))
}
