//! A VM's output streams, relayed to their readers, and the wait for the
//! last byte before the VM may end.
//!
//! One thread per stream copies the VM's stdout or stderr port to its
//! destination (our stdout, a containerd FIFO, a log) with blocking I/O:
//! back-pressure runs end to end, a slow reader stalls QEMU and then the
//! guest's writer, and nothing buffers without bound. A destination that
//! fails (a closed pipe) is dropped and the stream is still drained, so the
//! guest never blocks for good.
//!
//! The guest's `Exit` counts the bytes it wrote; bytes can still be queued
//! between the agent and us (a virtio queue holds megabytes) when it is
//! sent. [`DrainWatch`] tells when every counted byte has arrived — only then
//! may the host acknowledge the exit and let the guest power off. While a
//! relay is blocked writing to a slow reader the watch waits as long as it
//! takes; while it waits on the guest and nothing arrives for the `drain`
//! deadline, the guest is stalling (or lied about its counts), and the watch
//! says how many bytes are missing.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BUF: usize = 64 * 1024;

#[derive(Debug)]
struct Progress {
    bytes: AtomicU64,
    /// Inside a write to the destination: a slow reader, not the guest.
    writing: AtomicBool,
    /// The stream ended (the VM closed it, i.e. QEMU exited).
    ended: AtomicBool,
    /// Last byte read from the VM, or last write completed.
    active: Mutex<Instant>,
}

impl Progress {
    fn touch(&self) {
        *self.active.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(*self.active.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// One output stream of a VM being copied to its destination.
pub struct OutputRelay {
    name: &'static str,
    progress: Arc<Progress>,
    handle: Option<JoinHandle<()>>,
}

impl OutputRelay {
    /// Starts copying `from` to `to` (`None`: drain and discard). With
    /// `flush`, every chunk is flushed (a terminal or a pipe to a person).
    pub fn spawn<W: Write + Send + 'static>(
        name: &'static str,
        mut from: UnixStream,
        to: Option<W>,
        flush: bool,
    ) -> io::Result<OutputRelay> {
        let progress = Arc::new(Progress {
            bytes: AtomicU64::new(0),
            writing: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            active: Mutex::new(Instant::now()),
        });
        let p = Arc::clone(&progress);
        let handle = std::thread::Builder::new()
            .name(format!("relay-{name}"))
            .spawn(move || {
                let mut to = to;
                let mut buf = vec![0u8; BUF];
                loop {
                    let n = match from.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    p.touch();
                    if let Some(w) = to.as_mut() {
                        p.writing.store(true, Ordering::SeqCst);
                        let ok = w.write_all(&buf[..n]).is_ok() && (!flush || w.flush().is_ok());
                        p.writing.store(false, Ordering::SeqCst);
                        if !ok {
                            // The reader went away: keep draining the VM.
                            to = None;
                        }
                        p.touch();
                    }
                    p.bytes.fetch_add(n as u64, Ordering::SeqCst);
                }
                // Dropping the destination here tells a FIFO's reader the
                // stream ended.
                drop(to);
                p.ended.store(true, Ordering::SeqCst);
            })?;
        Ok(OutputRelay {
            name,
            progress,
            handle: Some(handle),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Bytes received from the VM (and handed to the destination) so far.
    pub fn bytes(&self) -> u64 {
        self.progress.bytes.load(Ordering::SeqCst)
    }

    /// The VM closed the stream.
    pub fn ended(&self) -> bool {
        self.progress.ended.load(Ordering::SeqCst)
    }

    /// Waits up to `within` for the relay to end (the VM is gone by then);
    /// returns the byte count, or `None` if it is still blocked on a reader
    /// (the thread is then left to finish on its own).
    pub fn join(mut self, within: Duration) -> Option<u64> {
        let deadline = Instant::now() + within;
        while !self.ended() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !self.ended() {
            return None;
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        Some(self.bytes())
    }
}

/// How the wait for a VM's last output bytes stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drain {
    /// Still waiting.
    Pending,
    /// Every counted byte arrived.
    Complete,
    /// The guest delivered nothing for the drain deadline (or the stream
    /// ended) with `got` of `want` bytes of `stream`.
    Short {
        stream: &'static str,
        got: u64,
        want: u64,
    },
}

/// Waits for every byte an `Exit` counted, without a deadline on a slow
/// reader and with one on a stalling guest.
pub struct DrainWatch {
    want: Vec<u64>,
    stall: Duration,
}

impl DrainWatch {
    /// `want[i]`: the bytes `Exit` counted for `relays[i]` (in the order
    /// later given to [`DrainWatch::poll`]).
    pub fn new(want: Vec<u64>, stall: Duration) -> DrainWatch {
        DrainWatch { want, stall }
    }

    /// Where the drain stands now. `paused`: the VM is frozen, so its
    /// silence is not a stall.
    pub fn poll(&self, relays: &[&OutputRelay], paused: bool) -> Drain {
        let now = Instant::now();
        let mut all = true;
        for (r, &want) in relays.iter().zip(&self.want) {
            let got = r.bytes();
            if got >= want {
                continue;
            }
            all = false;
            let p = &r.progress;
            if paused || p.writing.load(Ordering::SeqCst) {
                p.touch();
                continue;
            }
            if r.ended() || p.idle_for(now) >= self.stall {
                return Drain::Short {
                    stream: r.name,
                    got,
                    want,
                };
            }
        }
        if all {
            Drain::Complete
        } else {
            Drain::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes its time: a slow reader.
    struct Slow(Arc<Mutex<Vec<u8>>>, Duration);
    impl Write for Slow {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            std::thread::sleep(self.1);
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_slow_reader_is_waited_for_and_gets_every_byte() {
        let (mut vm, ours) = UnixStream::pair().unwrap();
        let sink = Arc::new(Mutex::new(Vec::new()));
        let r = OutputRelay::spawn(
            "stdout",
            ours,
            Some(Slow(sink.clone(), Duration::from_millis(30))),
            false,
        )
        .unwrap();
        let data = vec![7u8; 300 * 1024];
        let writer = std::thread::spawn(move || vm.write_all(&data));
        // The stall deadline is far shorter than the reader's pace.
        let w = DrainWatch::new(vec![300 * 1024], Duration::from_millis(10));
        let start = Instant::now();
        loop {
            match w.poll(&[&r], false) {
                Drain::Complete => break,
                Drain::Pending => std::thread::sleep(Duration::from_millis(2)),
                short => panic!("{short:?}"),
            }
            assert!(start.elapsed() < Duration::from_secs(20));
        }
        writer.join().unwrap().unwrap();
        assert_eq!(sink.lock().unwrap().len(), 300 * 1024);
    }

    #[test]
    fn a_guest_that_counts_bytes_it_never_sends_is_short() {
        let (mut vm, ours) = UnixStream::pair().unwrap();
        let r = OutputRelay::spawn("stderr", ours, None::<Vec<u8>>, false).unwrap();
        vm.write_all(b"abc").unwrap();
        let w = DrainWatch::new(vec![10], Duration::from_millis(50));
        let start = Instant::now();
        let got = loop {
            match w.poll(&[&r], false) {
                Drain::Pending => std::thread::sleep(Duration::from_millis(5)),
                other => break other,
            }
        };
        assert_eq!(
            got,
            Drain::Short {
                stream: "stderr",
                got: 3,
                want: 10
            }
        );
        assert!(start.elapsed() >= Duration::from_millis(50));
        // A paused VM is not stalling.
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(w.poll(&[&r], true), Drain::Pending);
        drop(vm);
        assert_eq!(r.join(Duration::from_secs(5)), Some(3));
    }

    #[test]
    fn a_failed_destination_is_dropped_and_the_stream_drained() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (mut vm, ours) = UnixStream::pair().unwrap();
        let r = OutputRelay::spawn("stdout", ours, Some(Broken), true).unwrap();
        vm.write_all(&[1u8; 200_000]).unwrap();
        drop(vm);
        assert_eq!(r.join(Duration::from_secs(5)), Some(200_000));
    }
}
