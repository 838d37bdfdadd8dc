//! A minimal QMP client on an inherited socketpair (`-chardev socket,fd=N`
//! plus `-mon mode=control`): what taking a template needs (`migrate`,
//! `query-migrate`), nothing on the filesystem.
//!
//! QEMU is as untrusted as the guest it runs: every read has a deadline,
//! a reply line is bounded, and what QEMU says reaches logs sanitised.

use std::io::{self, BufRead, BufReader, Read as _, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Longest QMP line read (QEMU's replies to our commands are a few hundred
/// bytes; events are small too).
const MAX_LINE: usize = 64 * 1024;
/// Events QEMU may send between a command and its reply before we give up.
const MAX_EVENTS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP i/o")]
    Io(#[from] io::Error),
    #[error("QMP gave no answer within {0:?}")]
    Timeout(Duration),
    #[error("QMP closed")]
    Closed,
    #[error("QMP sent something that is not a QMP message: {0}")]
    Garbled(String),
    #[error("QMP {command} failed: {message}")]
    Failed { command: String, message: String },
}

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Reads QEMU's greeting and leaves capabilities negotiation mode.
    pub fn connect(stream: UnixStream, timeout: Duration) -> Result<Qmp, QmpError> {
        let writer = stream.try_clone()?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let deadline = Instant::now() + timeout;
        let greeting = q.read_message(deadline)?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Garbled(describe(&greeting)));
        }
        q.execute("qmp_capabilities", json!({}), timeout)?;
        Ok(q)
    }

    /// Runs one command and returns its `return` value.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.execute_passing(command, arguments, None, timeout)
    }

    /// Hands QEMU a copy of `fd` under `name` (QMP `getfd`), for commands
    /// that take `fd:NAME`.
    pub fn pass_fd(
        &mut self,
        name: &str,
        fd: BorrowedFd<'_>,
        timeout: Duration,
    ) -> Result<(), QmpError> {
        self.execute_passing("getfd", json!({"fdname": name}), Some(fd), timeout)
            .map(|_| ())
    }

    fn execute_passing(
        &mut self,
        command: &str,
        arguments: Value,
        fd: Option<BorrowedFd<'_>>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let deadline = Instant::now() + timeout;
        let mut line = serde_json::to_vec(&json!({"execute": command, "arguments": arguments}))
            .map_err(|e| QmpError::Garbled(e.to_string()))?;
        line.push(b'\n');
        self.writer.set_write_timeout(Some(timeout))?;
        match fd {
            None => self.writer.write_all(&line)?,
            Some(fd) => send_with_fd(&self.writer, &line, fd)?,
        }
        for _ in 0..MAX_EVENTS {
            let m = self.read_message(deadline)?;
            if m.get("event").is_some() {
                continue;
            }
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                return Err(QmpError::Failed {
                    command: command.to_string(),
                    message: mu2_protocol::text::sanitize(
                        e.get("desc")
                            .and_then(Value::as_str)
                            .unwrap_or("(no description)"),
                        512,
                    ),
                });
            }
            return Err(QmpError::Garbled(describe(&m)));
        }
        Err(QmpError::Garbled(format!(
            "more than {MAX_EVENTS} events before the reply to {command}"
        )))
    }

    fn read_message(&mut self, deadline: Instant) -> Result<Value, QmpError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(QmpError::Timeout(Duration::ZERO));
        }
        self.reader.get_ref().set_read_timeout(Some(left))?;
        let mut buf = Vec::new();
        let n = match (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
        {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(QmpError::Timeout(left))
            }
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(QmpError::Closed);
        }
        if n > MAX_LINE {
            return Err(QmpError::Garbled(format!(
                "a line longer than {MAX_LINE} bytes"
            )));
        }
        serde_json::from_slice(&buf)
            .map_err(|_| QmpError::Garbled(mu2_protocol::text::sanitize(&buf, 200)))
    }
}

/// Writes `bytes` with `fd` attached (SCM_RIGHTS) to the first of them.
fn send_with_fd(sock: &UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [io::IoSlice::new(bytes)];
    let n = sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(io::Error::from)?;
    (&*sock).write_all(&bytes[n..])
}

fn describe(v: &Value) -> String {
    mu2_protocol::text::sanitize(v.to_string(), 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(script: &'static [&'static str]) -> (UnixStream, std::thread::JoinHandle<Vec<String>>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut r = BufReader::new(theirs.try_clone().unwrap());
            let mut w = theirs;
            let mut script = script.iter();
            if let Some(g) = script.next() {
                writeln!(w, "{g}").unwrap();
            }
            for reply in script {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap() == 0 {
                    break;
                }
                seen.push(l.trim().to_string());
                writeln!(w, "{reply}").unwrap();
            }
            seen
        });
        (ours, h)
    }

    #[test]
    fn negotiates_then_skips_events_before_a_reply() {
        let (s, h) = fake(&[
            r#"{"QMP": {"version": {}, "capabilities": []}}"#,
            r#"{"return": {}}"#,
            "{\"event\": \"STOP\"}\n{\"return\": {\"status\": \"completed\"}}",
        ]);
        let mut q = Qmp::connect(s, Duration::from_secs(5)).unwrap();
        let r = q
            .execute("query-migrate", json!({}), Duration::from_secs(5))
            .unwrap();
        assert_eq!(r["status"], "completed");
        drop(q);
        let seen = h.join().unwrap();
        assert!(seen[0].contains("qmp_capabilities"), "{seen:?}");
        assert!(seen[1].contains("query-migrate"), "{seen:?}");
    }

    #[test]
    fn errors_are_named_and_sanitised() {
        let (s, _h) = fake(&[
            r#"{"QMP": {}}"#,
            r#"{"return": {}}"#,
            r#"{"error": {"class": "GenericError", "desc": "bad \u001b[31mthing"}}"#,
        ]);
        let mut q = Qmp::connect(s, Duration::from_secs(5)).unwrap();
        let e = q
            .execute("migrate", json!({"uri": "fd:9"}), Duration::from_secs(5))
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("migrate failed"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text:?}");
    }

    #[test]
    fn a_silent_or_garbled_qemu_ends_in_an_error() {
        let (s, _keep) = UnixStream::pair().unwrap();
        let t = Instant::now();
        assert!(matches!(
            Qmp::connect(s, Duration::from_millis(200)),
            Err(QmpError::Timeout(_))
        ));
        assert!(t.elapsed() < Duration::from_secs(5));
        let (s, h) = fake(&["not json"]);
        assert!(matches!(
            Qmp::connect(s, Duration::from_secs(5)),
            Err(QmpError::Garbled(_))
        ));
        drop(h);
    }
}
