//! The pool socket's messages: a 4-byte big-endian length, then that many
//! bytes of JSON, at most [`MAX_MESSAGE`]; a lease's fds ride on its
//! answer's bytes (SCM_RIGHTS). One request per connection:
//!
//! 1. the client sends a [`Request`];
//! 2. the pool answers a [`Response`] (a `Leased` one with exactly
//!    [`crate::vm::LeaseFds::COUNT`] fds, a `Template` one with two);
//! 3. after `Leased`, the client says whether it took the VM over
//!    ([`Ack`]); a VM not taken, or not acknowledged in time, is killed by
//!    the pool.
//!
//! Both sides read with a deadline (socket timeouts) and refuse anything
//! longer, malformed, or carrying other fds than expected.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::record::Owner;
use crate::vm::LeaseInfo;

/// The wire format's version; both sides refuse another.
pub const WIRE_VERSION: u32 = 1;
/// The largest message either side reads.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most fds a message may carry.
const MAX_FDS: usize = 8;

/// Everything a warm VM must match to serve a request: the template key's
/// inputs, less the share's host path (the request attaches its own).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapeKey {
    pub memory_mib: u32,
    pub vcpus: u32,
    pub tb_size_mib: u32,
    pub debug: bool,
    pub accel: String,
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub share_tag: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "op", rename_all = "snake_case")]
pub enum Request {
    Lease {
        version: u32,
        shape: Box<ShapeKey>,
        /// Who will own the VM (checked against the peer's credentials).
        owner: Box<Owner>,
    },
    Status {
        version: u32,
    },
}

/// A warm VM's share: where the lessee attaches its image.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareInfo {
    pub host: PathBuf,
    pub jail: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "answer", rename_all = "snake_case")]
pub enum Response {
    Leased {
        info: Box<LeaseInfo>,
        share: ShareInfo,
        /// How long the VM was warm, ms.
        warm_ms: u64,
    },
    /// No warm VM of that shape now.
    Miss {
        why: String,
    },
    /// No warm VM of that shape now, but its shared template, to restore
    /// from: its RAM and device state memfds ride on the message, in that
    /// order.
    Template {
        why: String,
        template: Box<crate::template::SharedInfo>,
    },
    Status {
        status: super::server::Status,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    pub taken: bool,
}

/// Sends `msg`, with `fds` on its bytes.
pub fn send<T: Serialize>(s: &UnixStream, msg: &T, fds: &[OwnedFd]) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if body.len() > MAX_MESSAGE {
        return Err(io::Error::other("message too long"));
    }
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs = if raw.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    let mut sent = sendmsg::<()>(
        s.as_raw_fd(),
        &[IoSlice::new(&frame)],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)?;
    // The fds went with the first bytes; the rest is plain bytes.
    while sent < frame.len() {
        let mut w = s;
        sent += w.write(&frame[sent..])?;
    }
    Ok(())
}

/// Receives one message and the fds that came with it (at most
/// `max_fds`; more is an error, and every fd received is closed then).
pub fn recv<T: DeserializeOwned>(s: &UnixStream, max_fds: usize) -> io::Result<(T, Vec<OwnedFd>)> {
    let mut head = [0u8; 4];
    let mut fds = Vec::new();
    let got;
    let mut too_many = false;
    {
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut head)];
        let msg = recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        got = msg.bytes;
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            too_many = true;
        }
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel just installed these fds for us;
                    // nothing else owns them.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
    }
    if too_many || fds.len() > max_fds {
        return Err(io::Error::other(format!(
            "{} fds where at most {max_fds} were expected",
            fds.len()
        )));
    }
    if got == 0 {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    let mut r = s;
    r.read_exact(&mut head[got..])?;
    let len = u32::from_be_bytes(head) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::other(format!(
            "a message of {len} bytes (at most {MAX_MESSAGE})"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let msg =
        serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((msg, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_fds_cross() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = tempfile::tempfile().unwrap();
        send(&a, &Ack { taken: true }, &[OwnedFd::from(f)]).unwrap();
        let (ack, fds): (Ack, _) = recv(&b, 1).unwrap();
        assert!(ack.taken);
        assert_eq!(fds.len(), 1);
    }

    #[test]
    fn too_many_fds_and_long_or_bad_messages_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let fds: Vec<OwnedFd> = (0..2)
            .map(|_| OwnedFd::from(tempfile::tempfile().unwrap()))
            .collect();
        send(&a, &Ack { taken: true }, &fds).unwrap();
        assert!(recv::<Ack>(&b, 1).is_err());

        let (a, b) = UnixStream::pair().unwrap();
        let mut w = &a;
        w.write_all(&(MAX_MESSAGE as u32 + 1).to_be_bytes())
            .unwrap();
        assert!(recv::<Ack>(&b, 0).is_err());

        let (a, b) = UnixStream::pair().unwrap();
        let mut w = &a;
        w.write_all(&5u32.to_be_bytes()).unwrap();
        w.write_all(b"{\"x\":").unwrap();
        assert!(recv::<Ack>(&b, 0).is_err());

        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(recv::<Ack>(&b, 0).is_err());
    }
}
