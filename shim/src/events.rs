//! Events to containerd, published in the order they are queued.
//!
//! Every event goes through one queue served by one thread: a fast process
//! cannot have its TaskExit overtake its TaskStart. The queue is bounded: a
//! containerd that stops taking events holds back the VM owners that
//! publish (back-pressure) instead of growing the shim's memory.
//!
//! containerd-shim 0.11's publisher connects once; after a containerd
//! restart every publish fails. So a failed publish reconnects to
//! containerd's ttrpc address (`TTRPC_ADDRESS`) and tries again, backing
//! off 1 s, 2 s, … for at most [`PUBLISH_ATTEMPTS`] attempts, as
//! containerd's own Go shims do; the queue waits meanwhile, which keeps the
//! order. An event that still cannot go is dropped with an error line.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::{Duration, SystemTime};

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;

/// How long Shutdown waits for queued events to reach containerd.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);
/// Events queued before publishers wait.
const QUEUE: usize = 1024;
/// Tries of one event, reconnecting between them.
pub const PUBLISH_ATTEMPTS: u32 = 5;

pub enum Event {
    Create {
        id: String,
        bundle: String,
        stdin: String,
        stdout: String,
        stderr: String,
        terminal: bool,
        pid: u32,
    },
    Start {
        id: String,
        pid: u32,
    },
    ExecAdded {
        id: String,
        exec_id: String,
    },
    ExecStarted {
        id: String,
        exec_id: String,
        pid: u32,
    },
    /// The kernel's OOM killer ended a process of the task (published
    /// before that process's exit, as containerd's runc shim does).
    Oom {
        id: String,
    },
    Exit {
        id: String,
        exec_id: String,
        pid: u32,
        status: u32,
        at: SystemTime,
    },
    Delete {
        id: String,
        pid: u32,
        status: u32,
        at: SystemTime,
    },
    Paused {
        id: String,
    },
    Resumed {
        id: String,
    },
}

enum Msg {
    Event(Event),
    Flush(SyncSender<()>),
}

/// Queues events for the publisher thread; cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: SyncSender<Msg>,
    namespace: std::sync::Arc<str>,
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

impl Events {
    /// Starts the publisher thread.
    pub fn spawn(publisher: RemotePublisher, namespace: String) -> Events {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let ns = namespace.as_str().into();
        std::thread::spawn(move || serve(publisher, namespace, rx));
        Events { tx, namespace: ns }
    }

    /// Events that go nowhere (the `delete` action, unit tests).
    pub fn discard() -> Events {
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
        std::thread::spawn(move || {
            for m in rx {
                if let Msg::Flush(done) = m {
                    let _ = done.send(());
                }
            }
        });
        Events {
            tx,
            namespace: "".into(),
        }
    }

    /// The containerd namespace the events go to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn send(&self, e: Event) {
        let _ = self.tx.send(Msg::Event(e));
    }

    /// Waits (bounded) until everything queued so far was published.
    pub fn flush(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(FLUSH_DEADLINE);
        }
    }
}

fn serve(publisher: RemotePublisher, namespace: String, rx: Receiver<Msg>) {
    let mut publisher = publisher;
    let address = std::env::var("TTRPC_ADDRESS").ok();
    for m in rx {
        let e = match m {
            Msg::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Msg::Event(e) => e,
        };
        let (topic, msg): (&str, Box<dyn MessageDyn>) = match e {
            Event::Create {
                id,
                bundle,
                stdin,
                stdout,
                stderr,
                terminal,
                pid,
            } => (
                topics::TASK_CREATE_EVENT_TOPIC,
                Box::new(TaskCreate {
                    container_id: id,
                    bundle,
                    io: Some(TaskIO {
                        stdin,
                        stdout,
                        stderr,
                        terminal,
                        ..Default::default()
                    })
                    .into(),
                    pid,
                    ..Default::default()
                }),
            ),
            Event::Start { id, pid } => (
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: id,
                    pid,
                    ..Default::default()
                }),
            ),
            Event::ExecAdded { id, exec_id } => (
                topics::TASK_EXEC_ADDED_EVENT_TOPIC,
                Box::new(TaskExecAdded {
                    container_id: id,
                    exec_id,
                    ..Default::default()
                }),
            ),
            Event::ExecStarted { id, exec_id, pid } => (
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: id,
                    exec_id,
                    pid,
                    ..Default::default()
                }),
            ),
            Event::Oom { id } => (
                topics::TASK_OOM_EVENT_TOPIC,
                Box::new(TaskOOM {
                    container_id: id,
                    ..Default::default()
                }),
            ),
            Event::Exit {
                id,
                exec_id,
                pid,
                status,
                at,
            } => (
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    id: if exec_id.is_empty() {
                        id.clone()
                    } else {
                        exec_id
                    },
                    container_id: id,
                    pid,
                    exit_status: status,
                    exited_at: Some(timestamp(at)).into(),
                    ..Default::default()
                }),
            ),
            Event::Delete {
                id,
                pid,
                status,
                at,
            } => (
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: id.clone(),
                    id,
                    pid,
                    exit_status: status,
                    exited_at: Some(timestamp(at)).into(),
                    ..Default::default()
                }),
            ),
            Event::Paused { id } => (
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id: id,
                    ..Default::default()
                }),
            ),
            Event::Resumed { id } => (
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id: id,
                    ..Default::default()
                }),
            ),
        };
        let mut attempt = 1;
        while let Err(e) = publisher.publish(Context::default(), topic, &namespace, msg.clone_box())
        {
            if attempt == PUBLISH_ATTEMPTS {
                log::error!("cannot publish {topic} after {attempt} attempts: {e}; dropped");
                break;
            }
            log::warn!("cannot publish {topic} ({e}); reconnecting to containerd");
            std::thread::sleep(Duration::from_secs(u64::from(attempt)));
            attempt += 1;
            match address.as_deref().map(RemotePublisher::new) {
                Some(Ok(p)) => publisher = p,
                Some(Err(e)) => log::warn!("cannot reconnect to containerd: {e}"),
                None => log::warn!("no TTRPC_ADDRESS to reconnect to"),
            }
        }
    }
}
