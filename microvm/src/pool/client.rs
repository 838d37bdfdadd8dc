//! The lessee's side: [`crate::Vm::launch`] asks the pool first.
//!
//! Every failure here is a fallback, never the request's error: a pool
//! that is down, full, slow or wrong costs one log line and the time of
//! the attempt (bounded by `lease_timeout`), and the caller restores or
//! boots. A VM this side received but could not take over is killed (its
//! lifeline closes with it) or left to the pool.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::wire::{self, Ack, Request, Response, ShapeKey, WIRE_VERSION};
use super::IMAGE_SUBDIR;
use crate::jail::attach::{attach_image, AttachPoint};
use crate::record::RecordDir;
use crate::spec::VmSpec;
use crate::vm::{LeaseFds, Vm};

/// What a warm VM must match to serve `spec`; `None` when no warm VM can:
/// only a jailed VM with one read-only share (its image) is pooled.
pub fn shape_key(spec: &VmSpec) -> Option<ShapeKey> {
    if !matches!(spec.jail, crate::jail::JailMode::Jailed(_)) {
        return None;
    }
    let [share] = spec.shares.as_slice() else {
        return None;
    };
    if !share.readonly {
        return None;
    }
    Some(ShapeKey {
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        tb_size_mib: spec.tb_size_mib,
        debug: spec.debug,
        accel: format!("{:?}", spec.accel),
        qemu: spec.qemu.clone(),
        kernel: spec.kernel.clone(),
        initrd: spec.initrd.clone(),
        share_tag: share.tag.clone(),
    })
}

/// Connects without waiting: a pool that stopped accepting (stopped, or
/// flooded) fills its backlog, and a blocking connect would then wait with
/// no deadline; here that is an error (EAGAIN), and the caller falls back.
fn connect(socket: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{self as sock, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = sock::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    sock::connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &UnixAddr::new(socket)?,
    )?;
    let conn = UnixStream::from(fd);
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    Ok(conn)
}

/// The pool's status.
pub fn status(socket: &Path, timeout: Duration) -> std::io::Result<super::server::Status> {
    let conn = connect(socket, timeout)?;
    wire::send(
        &conn,
        &Request::Status {
            version: WIRE_VERSION,
        },
        &[],
    )?;
    match wire::recv::<Response>(&conn, 0)?.0 {
        Response::Status { status } => Ok(status),
        Response::Error { message } => Err(std::io::Error::other(message)),
        _ => Err(std::io::Error::other("an answer out of turn")),
    }
}

/// A VM for `spec` leased from the pool at `socket`, taken over, with the
/// request's image attached and its identity given; `None` (after a log
/// line) whenever the caller should restore or boot instead.
pub(crate) fn lease(spec: &VmSpec, socket: &Path, timeout: Duration) -> Option<Vm> {
    let id = &spec.id;
    let shape = shape_key(spec)?;
    let t0 = Instant::now();
    let conn = match connect(socket, timeout) {
        Ok(c) => c,
        Err(e) => {
            log::debug!("vm {id}: no pool at {} ({e})", socket.display());
            return None;
        }
    };
    let asked = wire::send(
        &conn,
        &Request::Lease {
            version: WIRE_VERSION,
            shape: Box::new(shape),
            owner: Box::new(spec.owner.clone()),
        },
        &[],
    );
    let answer = asked.and_then(|()| wire::recv::<Response>(&conn, LeaseFds::COUNT));
    if let Ok((Response::Template { why, template }, fds)) = answer {
        drop(conn);
        return restore_shared(spec, &why, *template, fds, t0);
    }
    let (info, share, warm_ms, fds) = match answer {
        Ok((
            Response::Leased {
                info,
                share,
                warm_ms,
            },
            fds,
        )) => (info, share, warm_ms, fds),
        Ok((Response::Miss { why }, _)) => {
            log::info!("vm {id}: pool miss ({why}); restoring");
            return None;
        }
        Ok((Response::Error { message }, _)) => {
            log::warn!(
                "vm {id}: the pool refused: {}; restoring",
                mu2_protocol::text::sanitize(&message, 200)
            );
            return None;
        }
        Ok(_) => {
            log::warn!("vm {id}: the pool answered out of turn; restoring");
            return None;
        }
        Err(e) => {
            log::warn!("vm {id}: the pool did not answer ({e}); restoring");
            return None;
        }
    };
    let refuse = |why: String| {
        log::warn!("vm {id}: leased VM {} refused: {why}; restoring", info.id);
        let _ = wire::send(&conn, &Ack { taken: false }, &[]);
        None
    };
    let Some(fds) = LeaseFds::from_vec(fds) else {
        return refuse("not the fds of a VM".into());
    };
    if !crate::jail::valid_id(&info.id) {
        return refuse("an invalid id".into());
    }
    let records = RecordDir::for_mode(&spec.jail);
    let record = match records.transfer(&info.id, &info.owner, spec.owner.clone()) {
        Ok(r) => r,
        Err(e) => return refuse(crate::describe_error(&e)),
    };
    // Ours now, whatever becomes of the pool: our copy of the lifeline
    // keeps it alive, and our record owns it.
    let _ = wire::send(&conn, &Ack { taken: true }, &[]);
    drop(conn);
    let leased_in = t0.elapsed();
    let vm_id = info.id.clone();
    let mut vm = match Vm::adopt(spec, *info, fds, record, Some(IMAGE_SUBDIR), t0) {
        Ok(vm) => vm,
        Err(e) => {
            log::warn!(
                "vm {id}: leased VM {vm_id} failed: {}; restoring",
                crate::describe_error(&e)
            );
            return None;
        }
    };
    let t_attach = Instant::now();
    let at = AttachPoint {
        host_share: share.host,
        jail_share: share.jail,
        subdir: IMAGE_SUBDIR.into(),
    };
    if let Err(e) = attach_image(vm.pid(), vm.qemu_pidfd(), &spec.shares[0].host_path, &at) {
        log::warn!(
            "vm {id}: cannot attach the image to leased VM {vm_id}: {}; restoring",
            crate::describe_error(&e)
        );
        vm.kill();
        return None;
    }
    vm.set_boot_time(t0.elapsed());
    log::info!(
        "vm {id}: leased from the pool as {vm_id} (warm {warm_ms} ms; lease {leased_in:?}, attach {:?}, in all {:?})",
        t_attach.elapsed(),
        t0.elapsed()
    );
    Some(vm)
}

/// A miss answered with the pool's shared template: a clone of it for
/// `spec`, launched here like any restore (the request's own shares, jail
/// and record); `None` (after a log line) when the template is not one to
/// trust or the clone failed, and the caller restores from the template
/// file instead.
fn restore_shared(
    spec: &VmSpec,
    why: &str,
    info: crate::template::SharedInfo,
    fds: Vec<std::os::fd::OwnedFd>,
    t0: Instant,
) -> Option<Vm> {
    let id = &spec.id;
    let why = mu2_protocol::text::sanitize(why, 200);
    let Ok([ram, state]) = <[std::os::fd::OwnedFd; 2]>::try_from(fds) else {
        log::warn!(
            "vm {id}: pool miss ({why}); its template came without its two memfds; restoring"
        );
        return None;
    };
    let t = match crate::template::SharedTemplate::adopt(spec, info, ram, state) {
        Ok(t) => t,
        Err(e) => {
            log::warn!("vm {id}: pool miss ({why}); its template was refused: {e}; restoring");
            return None;
        }
    };
    let handed = t0.elapsed();
    match t.restore(spec, None) {
        Ok(mut vm) => {
            vm.set_boot_time(t0.elapsed());
            log::info!(
                "vm {id}: pool miss ({why}); restored from the pool's shared template {} (handed over {handed:?}, in all {:?})",
                &t.key().as_str()[..12],
                t0.elapsed()
            );
            Some(vm)
        }
        Err(e) => {
            log::warn!(
                "vm {id}: pool miss ({why}); restoring from its shared template failed: {}; restoring",
                crate::describe_error(&e)
            );
            None
        }
    }
}
