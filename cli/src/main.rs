use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mu2_cli::run::{self, RunOptions};
use mu2_microvm::AccelChoice;

#[derive(Parser)]
#[command(
    name = "mu2",
    version,
    about = "Run OCI bundles in single-use microVMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a VM's guest, QEMU and accelerator come from (`run`, `template
/// build`, `pool serve`).
#[derive(clap::Args)]
struct VmArgs {
    /// Guest image directory (default: $MU2_GUEST_DIR or /usr/local/lib/mu2/guest).
    #[arg(long)]
    guest_dir: Option<PathBuf>,
    /// auto, kvm or tcg (default: $MU2_ACCEL or auto).
    #[arg(long, env = "MU2_ACCEL", default_value = "auto")]
    accel: AccelChoice,
    /// The QEMU binary.
    #[arg(long, env = "MU2_QEMU", default_value = mu2_microvm::spec::DEFAULT_QEMU)]
    qemu: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run config.json's process of BUNDLE in a fresh VM and exit with its status.
    Run {
        /// Names the VM (QEMU's -name is mu2-ID); default: run-PID-NANOS.
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        vm: VmArgs,
        /// Print boot and run times to stderr.
        #[arg(long)]
        timings: bool,
        /// Echo the guest console and log verbosely.
        #[arg(long)]
        debug: bool,
        /// Kill the VM when the process runs longer than this ("500ms", "30s", "2m"); exit 124.
        #[arg(long, value_parser = duration)]
        timeout: Option<Duration>,
        /// After a first INT or TERM (forwarded to the process), tear the VM down if it
        /// still runs after this long; a second INT or TERM tears it down at once.
        #[arg(long, value_parser = duration, default_value = "10s")]
        kill_grace: Duration,
        /// The OCI bundle directory (holding config.json).
        bundle: PathBuf,
    },
    /// Report what this host offers mu2.
    Check {
        #[arg(long)]
        guest_dir: Option<PathBuf>,
    },
    /// List this host's VMs, from their ownership records.
    Ps,
    /// Build, list or remove VM templates (docs/templates.md).
    Template {
        #[command(subcommand)]
        action: TemplateAction,
    },
    /// Serve warm VMs (`serve`) or show the pool (`status`) (docs/pool.md).
    Pool {
        #[command(subcommand)]
        action: PoolAction,
    },
    /// Collect what owners that died left: kill their VMMs, remove their
    /// cgroups, jails, uid claims and records; one line per VM.
    Gc {
        /// Only list what would be collected.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum TemplateAction {
    /// Build the template of the VM that `mu2 run BUNDLE` would start.
    Build {
        #[command(flatten)]
        vm: VmArgs,
        bundle: PathBuf,
    },
    /// List the templates, each verified.
    List,
    /// Remove every template.
    Rm,
}

#[derive(Subcommand)]
enum PoolAction {
    /// Keep warm VMs of the configured shapes and lease them until SIGTERM.
    Serve {
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Warm VMs per shape, memory, hits, misses and refills.
    Status {
        /// As Prometheus text.
        #[arg(long)]
        prometheus: bool,
    },
}

fn duration(s: &str) -> Result<Duration, String> {
    mu2_microvm::deadlines::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            id,
            vm:
                VmArgs {
                    guest_dir,
                    accel,
                    qemu,
                },
            timings,
            debug,
            timeout,
            kill_grace,
            bundle,
        } => {
            let level = if debug { "debug" } else { "warn" };
            env_logger::Builder::from_env(env_logger::Env::new().filter_or("MU2_LOG", level))
                .init();
            let opts = RunOptions {
                bundle,
                id,
                guest_dir,
                accel,
                qemu,
                timings,
                debug,
                timeout,
                kill_grace,
            };
            match run::run(&opts) {
                Ok(status) => ExitCode::from(status),
                Err(e) => {
                    eprintln!("mu2: {}", run::describe(&e));
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Ps => vms_command(mu2_cli::vms::ps),
        Command::Template { action } => template_command(action),
        Command::Pool { action } => pool_command(action),
        Command::Gc { dry_run } => vms_command(|out| mu2_cli::vms::gc(dry_run, out)),
        Command::Check { guest_dir } => {
            if mu2_cli::check::check(guest_dir.as_deref()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn vms_command(
    f: impl FnOnce(&mut std::io::StdoutLock<'static>) -> Result<(), mu2_cli::vms::VmsError>,
) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("MU2_LOG", "warn")).init();
    match f(&mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mu2: {}", mu2_microvm::describe_error(&e));
            ExitCode::FAILURE
        }
    }
}

fn pool_command(action: PoolAction) -> ExitCode {
    use mu2_cli::pool;
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("MU2_LOG", "info")).init();
    let r = match action {
        PoolAction::Serve { vm } => pool::serve(vm.guest_dir.as_deref(), vm.accel, vm.qemu),
        PoolAction::Status { prometheus } => {
            pool::status(prometheus, &mut std::io::stdout().lock())
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mu2: {}", mu2_microvm::describe_error(&e));
            ExitCode::FAILURE
        }
    }
}

fn template_command(action: TemplateAction) -> ExitCode {
    use mu2_cli::template;
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("MU2_LOG", "info")).init();
    let out = &mut std::io::stdout().lock();
    let r = match action {
        TemplateAction::Build { vm, bundle } => {
            template::build(&bundle, vm.guest_dir.as_deref(), vm.accel, vm.qemu, out)
        }
        TemplateAction::List => template::list(out),
        TemplateAction::Rm => template::remove_all(out),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mu2: {}", mu2_microvm::describe_error(&e));
            ExitCode::FAILURE
        }
    }
}
