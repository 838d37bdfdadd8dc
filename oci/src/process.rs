//! An OCI process (config.json's `process`, or an exec's process spec) as
//! the agent's [`Process`]: args, env, cwd, user, terminal, rlimits,
//! no_new_privileges, capabilities, oomScoreAdj (seccomp: the spec's, set
//! by the caller). Checks here are what the OCI runtime spec and runc
//! require; the agent's own checks (no NUL bytes, `KEY=VALUE` env, list
//! bounds) run on the whole request in [`crate::check_run`].

use std::collections::HashSet;
use std::path::PathBuf;

use mu2_protocol::{ConsoleSize, Process, Rlimit, Run, User};

use crate::error::{field, BundleError};

/// Maps an OCI process given as JSON, as containerd sends an exec's
/// process spec (at most [`crate::MAX_CONFIG_BYTES`]).
pub fn process_from_json(json: &[u8]) -> Result<Process, BundleError> {
    let path = PathBuf::from("<process spec>");
    if json.len() as u64 > crate::MAX_CONFIG_BYTES {
        return Err(BundleError::TooBig {
            path,
            size: json.len() as u64,
            max: crate::MAX_CONFIG_BYTES,
        });
    }
    let p: oci_spec::runtime::Process = crate::parse_json(&path, json, "process")?;
    let process = map_process(&p)?;
    crate::request::check_process(&process)?;
    Ok(process)
}

/// Maps an OCI process: the one mapping of config.json's `process` and of
/// an exec's process spec.
pub fn map_process(p: &oci_spec::runtime::Process) -> Result<Process, BundleError> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(BundleError::NoArgs);
    }
    let cwd = p.cwd();
    if !cwd.is_absolute() {
        return Err(BundleError::Cwd(cwd.clone()));
    }
    crate::security::refuse_process(p)?;
    if let Some(adj) = p.oom_score_adj().filter(|a| !(-1000..=1000).contains(a)) {
        return Err(BundleError::OomScoreAdj(adj));
    }
    let u = p.user();
    let mut seen = HashSet::new();
    let rlimits = p
        .rlimits()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            // The type is an enum of oci-spec: an unknown name never parses.
            let name = serde_json::to_value(r.typ())
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let at = format!("process.rlimits[{i}]");
            let resource = rlimit_number(&name)
                .ok_or_else(|| field(&at, format!("{name} is not a Linux rlimit")))?;
            if !seen.insert(resource) {
                return Err(field(at, format!("{name} is set twice")));
            }
            if r.soft() > r.hard() {
                return Err(field(
                    at,
                    format!(
                        "{name}: soft limit {} is above hard limit {}",
                        r.soft(),
                        r.hard()
                    ),
                ));
            }
            Ok(Rlimit {
                resource,
                soft: r.soft(),
                hard: r.hard(),
            })
        })
        .collect::<Result<Vec<_>, BundleError>>()?;
    Ok(Process {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd: cwd.to_string_lossy().into_owned(),
        user: User {
            uid: u.uid(),
            gid: u.gid(),
            additional_gids: u.additional_gids().clone().unwrap_or_default(),
            umask: u.umask(),
        },
        terminal: p.terminal().unwrap_or(false),
        console_size: p.console_size().as_ref().map(|b| ConsoleSize {
            rows: b.height().min(u64::from(u16::MAX)) as u16,
            cols: b.width().min(u64::from(u16::MAX)) as u16,
        }),
        rlimits,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        capabilities: crate::security::capabilities(p.capabilities().as_ref())?,
        seccomp: None,
        oom_score_adj: p.oom_score_adj(),
    })
}

/// Maps an exec's process spec for a VM that runs beside task `task`: the
/// container's seccomp filter applies to its execs too, as under runc.
pub fn exec_process(task: &Run, json: &[u8]) -> Result<Process, BundleError> {
    let mut p = process_from_json(json)?;
    p.seccomp = task.process.seccomp.clone();
    Ok(p)
}

/// x86_64 numbering of the RLIMIT_* resources.
fn rlimit_number(name: &str) -> Option<u32> {
    const NAMES: [&str; 16] = [
        "RLIMIT_CPU",
        "RLIMIT_FSIZE",
        "RLIMIT_DATA",
        "RLIMIT_STACK",
        "RLIMIT_CORE",
        "RLIMIT_RSS",
        "RLIMIT_NPROC",
        "RLIMIT_NOFILE",
        "RLIMIT_MEMLOCK",
        "RLIMIT_AS",
        "RLIMIT_LOCKS",
        "RLIMIT_SIGPENDING",
        "RLIMIT_MSGQUEUE",
        "RLIMIT_NICE",
        "RLIMIT_RTPRIO",
        "RLIMIT_RTTIME",
    ];
    NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}
