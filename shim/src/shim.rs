//! The shim binary's actions: `start` (spawn the shim server, answer its
//! address), the server itself, and `delete` (clean up after a shim that
//! died).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts};

use crate::events::{timestamp, Events};
use crate::process::STATUS_VM_GONE;
use crate::task::TaskService;

/// The binary's entry point.
pub fn main() {
    let config = Config {
        // QEMU is reaped by the code that spawned it (std's Child): a
        // SIGCHLD handler reaping every child would steal its status.
        no_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<Service>(crate::RUNTIME_ID, Some(config));
}

pub struct Service {
    id: String,
    namespace: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
}

impl containerd_shim::Shim for Service {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        Service {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            bundle,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        use crate::start;
        let options = start::read_options(std::io::stdin().lock())?;
        let cgroup = start::shim_cgroup(&options)?;
        // One shim per container: containerd's id is the grouping.
        let grouping = opts.id.clone();
        let (pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        if let Some(path) = cgroup {
            if let Err(e) = start::join_cgroup(pid, &path, Path::new("/sys/fs/cgroup")) {
                // The server must not outlive a start that failed.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                if let Some(socket) = address.strip_prefix("unix://") {
                    let _ = std::fs::remove_file(socket);
                }
                return Err(e.into());
            }
        }
        start::adjust_oom_score(pid, std::os::unix::process::parent_id());
        // The start action runs in the bundle directory.
        start::write_address(&std::env::current_dir().unwrap_or_default(), &address)?;
        Ok(address)
    }

    /// containerd runs this when it has given up on a shim: after the shim
    /// died, and also when it cannot reach one that may still live (after
    /// containerd's own restart). So it ends the container's VMs, not only
    /// what they left: exactly the VMs whose records name this container
    /// in this namespace (never a name prefix: `web` is not `web.1`) are
    /// killed if they still run, and their cgroups, jails, uid claims and
    /// records removed; then the rootfs is unmounted.
    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        use mu2_microvm::record::{Filter, GcOptions, RecordDir, GC_WAIT};
        log::info!("delete action for {} in {}", self.id, self.bundle.display());
        let records = match mu2_microvm::jail::JailMode::load() {
            Ok(mode) => RecordDir::for_mode(&mode),
            Err(e) => {
                log::warn!(
                    "delete action for {}: {}; using {}",
                    self.id,
                    mu2_microvm::describe_error(&e),
                    mu2_microvm::record::DEFAULT_RECORD_DIR
                );
                RecordDir::new(mu2_microvm::record::DEFAULT_RECORD_DIR)
            }
        };
        let filter = Filter::Container {
            namespace: self.namespace.clone(),
            container: self.id.clone(),
        };
        let opts = GcOptions {
            wait: GC_WAIT,
            dry_run: false,
        };
        let report = records.collect(&filter, &opts);
        for e in &report.entries {
            log::info!("delete action for {}: {}", self.id, e.summary());
        }
        crate::mount::unmount_rootfs(&self.bundle);
        Ok(DeleteResponse {
            pid: 0,
            exit_status: STATUS_VM_GONE,
            exited_at: Some(timestamp(SystemTime::now())).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let events = Events::spawn(publisher, self.namespace.clone());
        TaskService::new(events, Arc::clone(&self.exit))
    }
}
