//! The OCI hooks that run on the host: `createRuntime` and `prestart` once
//! the container is created, `poststart` once its process started,
//! `poststop` once it is deleted — each in the runtime's own namespaces, as
//! the runtime spec has them and as tools such as nerdctl rely on (its
//! networking is a `createRuntime` hook). The hooks the spec runs inside the
//! container's namespaces (`createContainer`, `startContainer`) cannot run
//! in a VM's guest and are refused by name (see [`crate::security`]).
//!
//! Each hook gets the container's state as JSON on its stdin (`ociVersion`,
//! `id`, `status`, `pid` — the VMM's, which is the container's pid on the
//! host — `bundle`, `annotations`), its `args` and exactly its `env`. Every
//! hook has a deadline: its `timeout`, or [`DEFAULT_TIMEOUT`] when it sets
//! none; one that runs past it is killed. A failed `createRuntime` or
//! `prestart` hook fails the container's creation; a failed `poststart` or
//! `poststop` hook is logged and the lifecycle goes on, as the spec says.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Spec};

/// How long a hook without a `timeout` may run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{stage} hook {path}: cannot start it")]
    Spawn {
        stage: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{stage} hook {path} {outcome}; it said: {stderr}")]
    Failed {
        stage: &'static str,
        path: PathBuf,
        outcome: String,
        stderr: String,
    },
}

/// One host-side hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostHook {
    pub path: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Duration,
}

/// The host-side hooks of a container, in the order they run at each stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// `createRuntime`, then the deprecated `prestart` (same moment).
    pub created: Vec<HostHook>,
    pub poststart: Vec<HostHook>,
    pub poststop: Vec<HostHook>,
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.poststart.is_empty() && self.poststop.is_empty()
    }
}

fn host_hooks(list: &Option<Vec<Hook>>) -> Vec<HostHook> {
    list.as_deref()
        .unwrap_or_default()
        .iter()
        .map(|h| HostHook {
            path: h.path().clone(),
            args: h.args().clone().unwrap_or_default(),
            env: h.env().clone().unwrap_or_default(),
            timeout: h
                .timeout()
                .filter(|&t| t > 0)
                .map_or(DEFAULT_TIMEOUT, |t| Duration::from_secs(t as u64)),
        })
        .collect()
}

/// The spec's host-side hooks (the others are refused by
/// [`crate::security::refuse_spec`]).
pub fn from_spec(spec: &Spec) -> Hooks {
    let Some(h) = spec.hooks() else {
        return Hooks::default();
    };
    let mut created = host_hooks(h.create_runtime());
    created.extend(host_hooks(h.prestart()));
    Hooks {
        created,
        poststart: host_hooks(h.poststart()),
        poststop: host_hooks(h.poststop()),
    }
}

/// The container's state as a hook reads it on stdin.
#[derive(Debug, Clone)]
pub struct State<'a> {
    pub id: &'a str,
    /// "created", "running" or "stopped".
    pub status: &'a str,
    /// The container's pid on the host: its VMM's.
    pub pid: u32,
    pub bundle: &'a Path,
}

impl State<'_> {
    fn json(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "ociVersion": "1.0.2",
            "id": self.id,
            "status": self.status,
            "pid": self.pid,
            "bundle": self.bundle,
            "annotations": {},
        }))
        .unwrap_or_default()
    }
}

/// Runs `hooks` in order; the first that fails ends the run with its error.
pub fn run(stage: &'static str, hooks: &[HostHook], state: &State<'_>) -> Result<(), HookError> {
    for h in hooks {
        run_one(stage, h, state)?;
    }
    Ok(())
}

/// Runs `hooks` in order, logging (not returning) failures: `poststart`
/// and `poststop`.
pub fn run_logged(stage: &'static str, hooks: &[HostHook], state: &State<'_>) -> Vec<HookError> {
    hooks
        .iter()
        .filter_map(|h| run_one(stage, h, state).err())
        .collect()
}

fn run_one(stage: &'static str, h: &HostHook, state: &State<'_>) -> Result<(), HookError> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(&h.path);
    // args[0] is the hook's own argv[0], as execve takes it.
    if let Some((arg0, rest)) = h.args.split_first() {
        cmd.arg0(arg0).args(rest);
    }
    // Its own process group, so that a timeout ends what it started too.
    cmd.process_group(0);
    cmd.env_clear();
    for kv in &h.env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| HookError::Spawn {
            stage,
            path: h.path.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its state is no error.
        let _ = stdin.write_all(&state.json());
    }
    let mut stderr = child.stderr.take();
    let (said_tx, said) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = std::io::Read::read_to_end(&mut std::io::Read::take(s, 4096), &mut buf);
        }
        let _ = said_tx.send(buf);
    });
    let deadline = Instant::now() + h.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
                let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    // What it said on stderr; a daemon it left behind may hold the pipe, so
    // the wait for the end of it is short.
    let said = said
        .recv_timeout(Duration::from_secs(1))
        .unwrap_or_default();
    let said = String::from_utf8_lossy(&said).into_owned();
    match status {
        Some(s) if s.success() => Ok(()),
        other => Err(HookError::Failed {
            stage,
            path: h.path.clone(),
            outcome: match other {
                Some(s) => format!("failed ({s})"),
                None => format!("ran past its timeout of {:?} and was killed", h.timeout),
            },
            stderr: mu2_protocol::text::sanitize(said.trim(), 1024),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(script: &str, timeout: Duration) -> HostHook {
        HostHook {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["MU2_HOOK_TEST=yes".into()],
            timeout,
        }
    }

    #[test]
    fn hooks_get_the_state_their_env_and_a_deadline() {
        let d = tempfile::tempdir().unwrap();
        let (out, env) = (d.path().join("state"), d.path().join("env"));
        let state = State {
            id: "c1",
            status: "created",
            pid: 4242,
            bundle: Path::new("/b"),
        };
        let h = hook(
            &format!(
                "cat > {}; env | grep -v '^PWD=' > {}",
                out.display(),
                env.display()
            ),
            DEFAULT_TIMEOUT,
        );
        run("createRuntime", &[h], &state).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(v["id"], "c1");
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["status"], "created");
        assert_eq!(v["bundle"], "/b");
        // Exactly the hook's env (the shell adds only PWD).
        assert_eq!(
            std::fs::read_to_string(&env).unwrap(),
            "MU2_HOOK_TEST=yes\n"
        );

        let e = run(
            "prestart",
            &[hook("echo no >&2; exit 3", DEFAULT_TIMEOUT)],
            &state,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("exit status: 3") && e.to_string().contains("no"),
            "{e}"
        );
        let t = Instant::now();
        let e = run(
            "prestart",
            &[hook("sleep 30", Duration::from_millis(200))],
            &state,
        )
        .unwrap_err();
        assert!(e.to_string().contains("timeout"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
        let errs = run_logged(
            "poststop",
            &[
                hook("exit 1", DEFAULT_TIMEOUT),
                hook("true", DEFAULT_TIMEOUT),
            ],
            &state,
        );
        assert_eq!(errs.len(), 1);
        let missing = HostHook {
            path: "/nonexistent-hook".into(),
            ..hook("", DEFAULT_TIMEOUT)
        };
        assert!(matches!(
            run("poststart", &[missing], &state),
            Err(HookError::Spawn { .. })
        ));
    }
}
