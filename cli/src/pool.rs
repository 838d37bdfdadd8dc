//! `mu2 pool serve|status`: the pool daemon (`mu2_microvm::pool`) and its
//! operator's view.
//!
//! `serve` keeps warm VMs of this host's guest image, QEMU, accelerator,
//! jail and deadlines, in the shapes `[pool]` names (docs/pool.md), and
//! serves leases until SIGTERM. `status` prints the pool's counters, or
//! with `--prometheus` the same as Prometheus text.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use mu2_microvm::jail::config::ConfigError;
use mu2_microvm::pool::server::{Pool, PoolError, Status};
use mu2_microvm::pool::PoolConfig;
use mu2_microvm::record::{Owner, OwnerKind};
use mu2_microvm::spec::{VmSpec, DEFAULT_TB_SIZE_MIB};
use mu2_microvm::{AccelChoice, GuestImage};

#[derive(Debug, thiserror::Error)]
pub enum PoolCmdError {
    #[error("cannot read the mu2 configuration")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Guest(#[from] mu2_microvm::guest::GuestImageError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("no pool answers at {path}")]
    Unreachable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the output")]
    Output(#[from] io::Error),
}

/// `mu2 pool serve`.
pub fn serve(
    guest_dir: Option<&std::path::Path>,
    accel: AccelChoice,
    qemu: PathBuf,
) -> Result<(), PoolCmdError> {
    let cfg = PoolConfig::load()?;
    let host = mu2_microvm::config::HostConfig::load()?;
    let image = GuestImage::locate(guest_dir)?;
    let base = VmSpec {
        id: "pool".into(),
        qemu,
        kernel: image.kernel.clone(),
        initrd: image.initrd.clone(),
        memory_mib: mu2_microvm::spec::DEFAULT_MEMORY_MIB,
        vcpus: 1,
        accel: accel.resolve(),
        shares: vec![],
        deadlines: host.deadlines,
        tb_size_mib: DEFAULT_TB_SIZE_MIB,
        debug: false,
        jail: host.jail,
        owner: Owner::this_process(OwnerKind::Pool),
        templates: host.templates,
        pool: mu2_microvm::pool::PoolMode::Off,
        owned_dir: None,
    };
    let pool = Pool::new(cfg, base)?;
    pool.serve()?;
    Ok(())
}

fn fetch() -> Result<Status, PoolCmdError> {
    let cfg = PoolConfig::load()?;
    mu2_microvm::pool::client::status(&cfg.socket, Duration::from_secs(5)).map_err(|source| {
        PoolCmdError::Unreachable {
            path: cfg.socket.clone(),
            source,
        }
    })
}

/// `mu2 pool status [--prometheus]`.
pub fn status(prometheus: bool, out: &mut impl Write) -> Result<(), PoolCmdError> {
    let s = fetch()?;
    if prometheus {
        write!(out, "{}", prometheus_text(&s))?;
        return Ok(());
    }
    writeln!(
        out,
        "pool pid {} up {} s: {} leases; warm VMs hold {} of {} MiB guest memory (RSS {} MiB, PSS {} MiB); shared templates {} MiB",
        s.pid,
        s.uptime_s,
        s.leases,
        s.warm_mib,
        s.budget_mib,
        s.warm_rss_kib / 1024,
        s.warm_pss_kib / 1024,
        s.template_kib / 1024
    )?;
    for sh in &s.shapes {
        writeln!(
            out,
            "  {} MiB {} vCPU: {}/{} warm ({}), {} hits, {} misses ({} restored from the shared template), {} refills ({:.2}/s, last {} ms), {} failures{}",
            sh.memory_mib,
            sh.vcpus,
            sh.warm,
            sh.target,
            if sh.shared_template {
                "shared template"
            } else {
                "template file"
            },
            sh.hits,
            sh.misses,
            sh.template_handouts,
            sh.refills,
            sh.refill_rate,
            sh.refill_ms,
            sh.refill_failures,
            sh.last_error
                .as_deref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

/// The pool's status as Prometheus text.
pub fn prometheus_text(s: &Status) -> String {
    let mut t = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, rows: Vec<(String, String)>| {
        t.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in rows {
            t.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let one = |v: u64| vec![(String::new(), v.to_string())];
    gauge(
        "mu2_pool_leases_total",
        "VMs leased.",
        "counter",
        one(s.leases),
    );
    gauge(
        "mu2_pool_budget_bytes",
        "Guest memory the warm VMs may hold.",
        "gauge",
        one(s.budget_mib << 20),
    );
    gauge(
        "mu2_pool_warm_guest_bytes",
        "Guest memory of the warm VMs.",
        "gauge",
        one(s.warm_mib << 20),
    );
    gauge(
        "mu2_pool_warm_rss_bytes",
        "Resident memory of the warm VMs' QEMUs.",
        "gauge",
        one(s.warm_rss_kib << 10),
    );
    gauge(
        "mu2_pool_warm_pss_bytes",
        "Proportional memory of the warm VMs' QEMUs.",
        "gauge",
        one(s.warm_pss_kib << 10),
    );
    gauge(
        "mu2_pool_template_bytes",
        "Host memory of the shared templates' RAM, mapped copy-on-write by their clones.",
        "gauge",
        one(s.template_kib << 10),
    );
    let per = |f: &dyn Fn(&mu2_microvm::pool::server::ShapeStatus) -> String| {
        s.shapes
            .iter()
            .map(|sh| {
                (
                    format!(
                        "{{memory_mib=\"{}\",vcpus=\"{}\"}}",
                        sh.memory_mib, sh.vcpus
                    ),
                    f(sh),
                )
            })
            .collect::<Vec<_>>()
    };
    gauge(
        "mu2_pool_warm_vms",
        "Warm VMs ready to lease.",
        "gauge",
        per(&|sh| sh.warm.to_string()),
    );
    gauge(
        "mu2_pool_target_vms",
        "Warm VMs the pool aims to keep.",
        "gauge",
        per(&|sh| sh.target.to_string()),
    );
    gauge(
        "mu2_pool_template_handouts_total",
        "Misses answered with the shared template, restored from by the lessee.",
        "counter",
        per(&|sh| sh.template_handouts.to_string()),
    );
    gauge(
        "mu2_pool_hits_total",
        "Leases served from a warm VM.",
        "counter",
        per(&|sh| sh.hits.to_string()),
    );
    gauge(
        "mu2_pool_misses_total",
        "Leases asked for with no warm VM.",
        "counter",
        per(&|sh| sh.misses.to_string()),
    );
    gauge(
        "mu2_pool_refills_total",
        "Warm VMs made.",
        "counter",
        per(&|sh| sh.refills.to_string()),
    );
    gauge(
        "mu2_pool_refill_failures_total",
        "Warm VMs that failed to come up or died warm.",
        "counter",
        per(&|sh| sh.refill_failures.to_string()),
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_every_series() {
        let s = Status {
            leases: 3,
            shapes: vec![mu2_microvm::pool::server::ShapeStatus {
                memory_mib: 256,
                vcpus: 1,
                warm: 2,
                hits: 3,
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = prometheus_text(&s);
        assert!(t.contains("mu2_pool_leases_total 3\n"));
        assert!(t.contains("mu2_pool_warm_vms{memory_mib=\"256\",vcpus=\"1\"} 2\n"));
        assert!(t.contains("mu2_pool_hits_total{memory_mib=\"256\",vcpus=\"1\"} 3\n"));
        assert!(t.contains("# TYPE mu2_pool_misses_total counter\n"));
    }
}
