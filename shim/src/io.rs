//! containerd's stdio FIFOs and the relays between them and a VM's stdio
//! ports.
//!
//! Output FIFOs are opened in Create without ever blocking, as runc's shim
//! does: a read end first, which the shim holds (and never reads) for the
//! process's life, then the write end the relay uses. The held read end means
//! the FIFO always has a reader: when containerd goes away (a restart, a
//! detached client) writes wait for the next reader instead of failing, so
//! no output is thrown away, and a restarted containerd simply reopens the
//! FIFO and reads on. The relay's write end is the only writer: when it
//! closes, containerd's reader sees the end of the stream.
//! The stdin FIFO is opened by its relay thread, blocking, as runc's shim
//! does: the open returns when containerd's writer is there, so an EOF read
//! afterwards is a real end of input. `CloseIO` ends stdin even while
//! containerd keeps its end open: the relay polls, and once told to close it
//! drains what is buffered and stops. Either way the agent learns the end of
//! stdin with the byte count (`StdinClose`).
//!
//! containerd 1.6 passes a log URI (`ctr run --log-uri`, parsed by
//! [`crate::log_uri`]) as the stdout and stderr paths, and mu2 honours it as
//! runc's shim does: `file:///abs/path` appends both streams to that file;
//! `binary:///abs/path?k=v` starts that logger with the output on fds 3 and 4, a pipe on fd 5 it closes (or
//! writes to) once ready, `k v` as arguments and only `CONTAINER_ID` and
//! `CONTAINER_NAMESPACE` in its environment. A logger that does not end
//! once its input did is sent SIGTERM, then SIGKILL.
//!
//! Relays use blocking I/O, so back-pressure runs end to end as in `mu2
//! run`: a slow reader of a FIFO stalls the relay, QEMU and the guest.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mu2_microvm::vm::ControlSender;
use mu2_protocol::HostMsg;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::ShimError;
use crate::log_uri::{parse_output, Output};

/// How often a stdin relay looks whether it was told to close.
const STDIN_POLL_MS: u16 = 100;
const RELAY_BUF: usize = 64 * 1024;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ShimError + '_ {
    move |source| ShimError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A process's stdout and stderr, and the logger behind them if any.
pub struct Outputs {
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    pub logger: Option<LogBinary>,
    /// Read ends held open on the output FIFOs for the process's life.
    pub held: Vec<File>,
}

/// Opens a process's outputs; a `binary://` stdout takes both streams.
pub fn open_outputs(
    stdout: &str,
    stderr: &str,
    container_id: &str,
    namespace: &str,
) -> Result<Outputs, ShimError> {
    if let Output::Binary { path, args } = parse_output(stdout)? {
        let (logger, out, err) = LogBinary::start(&path, &args, container_id, namespace)?;
        return Ok(Outputs {
            stdout: Some(out),
            stderr: Some(err),
            logger: Some(logger),
            held: Vec::new(),
        });
    }
    let mut held = Vec::new();
    let mut open = |path: &str| -> Result<Option<File>, ShimError> {
        Ok(match open_output(path)? {
            Some((w, r)) => {
                held.extend(r);
                Some(w)
            }
            None => None,
        })
    };
    let stdout = open(stdout)?;
    let stderr = open(stderr)?;
    Ok(Outputs {
        stdout,
        stderr,
        logger: None,
        held,
    })
}

/// Opens a process's output: a FIFO without blocking (with the read end
/// the shim holds: see the module docs), a log file for appending; `None`
/// for null IO. Returns (the write end, the held read end).
pub fn open_output(path: &str) -> Result<Option<(File, Option<File>)>, ShimError> {
    let p = match parse_output(path)? {
        Output::None => return Ok(None),
        Output::File(p) => return open_log_file(&p).map(|f| Some((f, None))),
        Output::Fifo(p) => p,
        Output::Binary { .. } => {
            return Err(ShimError::InvalidArgument(format!(
                "log uri {path}: a binary logger takes stdout and stderr together"
            )))
        }
    };
    let p = p.as_path();
    // A non-blocking read open never waits for a writer; with it in place
    // the write open finds a reader at once.
    let held = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)
        .map_err(io_err(p))?;
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)
        .map_err(io_err(p))?;
    set_blocking(&file).map_err(io_err(p))?;
    Ok(Some((file, Some(held))))
}

/// How long a logger has to say it is ready.
const LOGGER_READY: Duration = Duration::from_secs(10);
/// How long a logger has to end after its input did, and then after
/// SIGTERM.
const LOGGER_GRACE: Duration = Duration::from_secs(12);

/// A running `binary://` logger; reaped (bounded) in the background once
/// dropped, which the process's owner does after the output ended.
pub struct LogBinary {
    child: Option<Child>,
    path: PathBuf,
}

impl LogBinary {
    /// Starts the logger; returns it with the write ends of its stdout and
    /// stderr pipes once it said it is ready.
    fn start(
        path: &Path,
        args: &[String],
        container_id: &str,
        namespace: &str,
    ) -> Result<(LogBinary, File, File), ShimError> {
        let err = |source| ShimError::LogBinary {
            path: path.to_path_buf(),
            source,
        };
        let (out_r, out_w) = pipe_files().map_err(err)?;
        let (err_r, err_w) = pipe_files().map_err(err)?;
        let (ready_r, ready_w) = pipe_files().map_err(err)?;
        let mut cmd = Command::new(path);
        cmd.args(args)
            .env_clear()
            .env("CONTAINER_ID", container_id)
            .env("CONTAINER_NAMESPACE", namespace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        crate::sys::pass_fds(&mut cmd, [out_r, err_r, ready_w]).map_err(err)?;
        let child = cmd.spawn().map_err(err)?;
        drop(cmd); // our copies of the logger's ends
        let logger = LogBinary {
            child: Some(child),
            path: path.to_path_buf(),
        };
        let mut fds = [PollFd::new(ready_r.as_fd(), PollFlags::POLLIN)];
        let ms = LOGGER_READY.as_millis() as u16;
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => {}
            _ => {
                return Err(err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("not ready within {LOGGER_READY:?}"),
                )))
            }
        }
        log::info!("log binary {} ready", path.display());
        Ok((logger, out_w, err_w))
    }
}

impl Drop for LogBinary {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let path = self.path.clone();
        std::thread::spawn(move || {
            let ended = |child: &mut Child, within: Duration| {
                let deadline = Instant::now() + within;
                while Instant::now() < deadline {
                    if !matches!(child.try_wait(), Ok(None)) {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                false
            };
            if ended(&mut child, LOGGER_GRACE) {
                return;
            }
            log::warn!("log binary {} still runs; SIGTERM", path.display());
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            if !ended(&mut child, LOGGER_GRACE) {
                let _ = child.kill();
                let _ = child.wait();
            }
        });
    }
}

fn pipe_files() -> io::Result<(File, File)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok((File::from(r), File::from(w)))
}

fn open_log_file(p: &Path) -> Result<File, ShimError> {
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(p)
        .map_err(io_err(p))
}

fn set_blocking(f: &File) -> io::Result<()> {
    let flags = fcntl(f.as_raw_fd(), FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
    fcntl(f.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_files_are_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/log");
        let uri = format!("file://{}", p.display());
        for line in ["one\n", "two\n"] {
            let (mut f, _) = open_output(&uri).unwrap().unwrap();
            f.write_all(line.as_bytes()).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one\ntwo\n");
    }
}
