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

    /// containerd runs this after a shim died. QEMU died with it (its
    /// parent-death signal); what is left on the host is the rootfs mount
    /// and the shim's socket, the VMMs' cgroups and their jails'
    /// directories and claim files.
    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        log::info!("delete action for {} in {}", self.id, self.bundle.display());
        crate::mount::unmount_rootfs(&self.bundle);
        let vm = crate::task::vm_id(&self.id, "");
        let n = mu2_microvm::cgroup::remove_left_behind(&vm);
        // The jails' claims were released by the kernel when the VMMs died;
        // their directories and claim files stay until removed here.
        let j = match mu2_microvm::jail::JailMode::load() {
            Ok(mu2_microvm::jail::JailMode::Jailed(cfg)) => {
                mu2_microvm::jail::remove_left_behind(&cfg, &vm)
            }
            Ok(_) => 0,
            Err(e) => {
                log::warn!("delete action for {}: {e}", self.id);
                0
            }
        };
        log::info!(
            "delete action for {}: removed {n} cgroup(s) and {j} jail leftover(s) of its vms",
            self.id
        );
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
