//! `mu2-gateway --config FILE [--listen ADDR]`: serves the routes of FILE,
//! each request in a fresh microVM, until SIGTERM or SIGINT, then drains.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use mu2_gateway::config::Config;
use mu2_gateway::server::{Gateway, VmOptions};
use mu2_microvm::AccelChoice;

#[derive(Parser)]
#[command(
    name = "mu2-gateway",
    version,
    about = "the µ²service dispatcher: a fresh microVM for every HTTP request (CGI/1.1)"
)]
struct Args {
    /// The gateway's configuration (TOML): listen, [[route]], [containerd].
    #[arg(long)]
    config: PathBuf,
    /// Listen here instead of the config's `listen`.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// The guest image directory (default: MU2_GUEST_DIR or the installed one).
    #[arg(long, env = "MU2_GUEST_DIR")]
    guest_dir: Option<PathBuf>,
    /// kvm, tcg or auto.
    #[arg(long, default_value = "auto")]
    accel: AccelChoice,
    /// The QEMU binary.
    #[arg(long, default_value = mu2_microvm::spec::DEFAULT_QEMU)]
    qemu: PathBuf,
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let mut config = Config::load(&args.config)?;
    if let Some(l) = args.listen {
        config.listen = l;
    }
    let listen = config.listen;
    let gateway = Gateway::new(
        config,
        VmOptions {
            qemu: args.qemu,
            accel: args.accel.resolve(),
            guest_dir: args.guest_dir,
        },
    )
    .map_err(|e| anyhow::anyhow!(mu2_microvm::describe_error(&e)))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let bound = listener.local_addr().unwrap_or(listen);
        log::info!("listening on http://{bound}");
        let shutdown = async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                log::error!("cannot handle SIGTERM and SIGINT");
                return std::future::pending().await;
            };
            tokio::select! {
                _ = term.recv() => log::info!("SIGTERM: draining"),
                _ = int.recv() => log::info!("SIGINT: draining"),
            }
        };
        Arc::new(gateway).serve(listener, shutdown).await;
        anyhow::Ok(())
    })?;
    log::info!("stopped");
    Ok(())
}
