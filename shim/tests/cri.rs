//! Kubernetes' side of containerd: the CRI plugin of a private containerd
//! (Debian's 1.6, started here on its own socket, root and state under a
//! temp dir) runs a pod through a RuntimeClass-style runtime handler, driven
//! by a CRI v1 gRPC client (the `k8s-cri` crate) the way the kubelet drives
//! it: RunPodSandbox, CreateContainer, StartContainer, ContainerStatus (exit
//! code), the container's CRI log file, StopPodSandbox, RemovePodSandbox.
//!
//! The handler `mu2` maps to `io.containerd.mu2.v1`; `runc`
//! (`io.containerd.runc.v2`) runs the same pod as the oracle. With containerd
//! 1.6's CRI the pod sandbox (the "pause" container) is started through the
//! pod's runtime handler too, so with `mu2` the sandbox is a microVM of its
//! own running the pause process, and every container of the pod is another
//! one: the test checks both.
//!
//! No registry and no CNI: the two images (a busybox image for the
//! container, a pause image that sleeps) are built here from the busybox test
//! bundle's rootfs (scripts/build-test-bundles) and imported with
//! `ctr -n k8s.io images import`; the pod uses the node's network namespace,
//! for which the CRI plugin needs no CNI plugin.
//!
//! Needs root, containerd, ctr, runc, QEMU and the installed guest image.
//! The tests run one at a time (at most two VMs at once: the sandbox and the
//! container). Afterwards nothing of the test is left: no sandbox, no
//! container, no shim, no QEMU, no mount under the temp dir.

mod common;
use common::{procs, tail, test_rootfs};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainersRequest,
    ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest, VersionRequest,
};
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

const BUSYBOX: &str = "docker.io/mu2/busybox:cri";
const PAUSE: &str = "docker.io/mu2/pause:cri";
/// The container of every pod: both streams and a non-zero exit.
const SCRIPT: &str = "echo hello from $(uname -r); echo err >&2; exit 3";
/// Longest any one CRI call, ctr command or wait may take.
const DEADLINE: Duration = Duration::from_secs(180);

/// One pod at a time: at most two VMs, and the process checks of one test
/// never see the other's.
static SERIAL: Mutex<()> = Mutex::new(());

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Writes an OCI image layout archive holding two images that share one
/// uncompressed layer (the busybox rootfs): BUSYBOX (`sh`) and PAUSE, whose
/// entrypoint sleeps until the sandbox is killed (CRI stops a sandbox with
/// SIGKILL).
fn build_image_archive(rootfs: &Path, out: &Path) {
    let mut layer = tar::Builder::new(Vec::new());
    layer.mode(tar::HeaderMode::Complete);
    layer.follow_symlinks(false);
    layer.append_dir_all(".", rootfs).unwrap();
    let layer = layer.into_inner().unwrap();
    let layer_digest = sha256_hex(&layer);

    let mut blobs: Vec<(String, Vec<u8>)> = vec![(layer_digest.clone(), layer.clone())];
    let mut manifests = Vec::new();
    for (name, entrypoint, cmd) in [
        (BUSYBOX, serde_json::json!(null), serde_json::json!(["sh"])),
        (
            PAUSE,
            serde_json::json!(["/bin/sleep", "2147483647"]),
            serde_json::json!(null),
        ),
    ] {
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Entrypoint": entrypoint,
                "Cmd": cmd,
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
        }))
        .unwrap();
        let config_digest = sha256_hex(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{config_digest}"),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": format!("sha256:{layer_digest}"),
                "size": layer.len(),
            }],
        }))
        .unwrap();
        let manifest_digest = sha256_hex(&manifest);
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name},
        }));
        blobs.push((config_digest, config));
        blobs.push((manifest_digest, manifest));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": manifests,
    }))
    .unwrap();

    let mut archive = tar::Builder::new(std::fs::File::create(out).unwrap());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        archive.append_data(&mut h, path, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for (digest, data) in &blobs {
        add(&format!("blobs/sha256/{digest}"), data);
    }
    archive.into_inner().unwrap();
}

/// How QEMU's `-name` of container `id`'s VMs starts: `mu2-` and the VM id,
/// which starts with the container id (cut to fit, then a hash); 16 of a
/// CRI id's random hex digits tell the test's containers apart.
fn vm_name_prefix(id: &str) -> String {
    format!("mu2-{}", &id[..id.len().min(16)])
}

/// What of `ids` is still there: runc's cgroups (`k8s.io/<id>`, the CRI
/// default parent with cgroupfs, in every v1 hierarchy and the v2 tree),
/// and mu2's VMM cgroups and jails.
fn leftover_cgroups(ids: &[&str]) -> Vec<String> {
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(rd.flatten().map(|e| e.path()));
    }
    let mut left = Vec::new();
    for root in roots {
        for id in ids {
            let dir = root.join("k8s.io").join(id);
            if dir.is_dir() {
                left.push(format!("cgroup {}", dir.display()));
            }
        }
    }
    // A VM id starts with its container id (cut to fit, then a hash).
    left.extend(common::vm_leftovers(|name| {
        ids.iter()
            .any(|id| name.starts_with(&id[..id.len().min(16)]))
    }));
    left
}

/// Runs `fut` with the test's deadline.
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {DEADLINE:?}"),
    }
}

/// A containerd with the CRI plugin, on its own socket, root and state.
struct Containerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("mu2-cri-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        // The CNI directories stay empty: host-network pods need no CNI.
        for sub in ["cni-bin", "cni-conf", "logs"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{sock}"

[debug]
  level = "info"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # This host denies lowering oom_score_adj (no CAP_SYS_RESOURCE), and the
  # sandbox spec asks for -998: keep it no lower than containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc_root}"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.mu2]
      runtime_type = "io.containerd.mu2.v1"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("c.sock").display(),
            cni_bin = d.join("cni-bin").display(),
            cni_conf = d.join("cni-conf").display(),
            runc_root = d.join("runc").display(),
        );
        let child = common::spawn_containerd(d, &config);
        let ctd = Containerd {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ctd.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up:\n{}",
                tail(&ctd.log(), 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let archive = ctd.dir.path().join("images.tar");
        build_image_archive(&test_rootfs(), &archive);
        let imp = ctd.ctr(&[
            "-n",
            "k8s.io",
            "images",
            "import",
            archive.to_str().unwrap(),
        ]);
        assert!(
            imp.status.success(),
            "image import: {}",
            String::from_utf8_lossy(&imp.stderr)
        );
        ctd
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs ctr against this containerd, with the deadline.
    fn ctr(&self, args: &[&str]) -> std::process::Output {
        self.try_ctr(args, DEADLINE)
            .unwrap_or_else(|| panic!("ctr {args:?}: no answer within {DEADLINE:?}"))
    }

    /// Runs ctr; `None` (ctr killed) when it does not answer `within`.
    fn try_ctr(&self, args: &[&str], within: Duration) -> Option<std::process::Output> {
        let mut child = Command::new("ctr")
            .arg("-a")
            .arg(self.sock())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + within;
        while child.try_wait().ok()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().ok()
    }

    async fn client(&self) -> RuntimeServiceClient<Channel> {
        let sock = self.sock();
        let channel = Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let sock = sock.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(sock).await?,
                    ))
                }
            }))
            .await
            .expect("connect to containerd's CRI socket");
        RuntimeServiceClient::new(channel)
    }

    /// Processes of this containerd's shims and of the VMs of `ids`.
    fn leftover_processes(&self, ids: &[&str]) -> Vec<String> {
        let sock = self.sock().display().to_string();
        procs()
            .into_iter()
            .filter(|(_, cmd)| {
                (cmd.contains("containerd-shim") && cmd.contains(&sock))
                    || (cmd.contains("qemu-system")
                        && ids.iter().any(|id| cmd.contains(&vm_name_prefix(id))))
            })
            .map(|(pid, cmd)| format!("process {pid}: {cmd}"))
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A test that failed half-way leaves its pods running: their tasks
        // (and with them shims and VMs) go before containerd does.
        let tasks = self
            .try_ctr(
                &["-n", "k8s.io", "tasks", "ls", "-q"],
                Duration::from_secs(20),
            )
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in tasks.split_whitespace() {
            let _ = self.try_ctr(
                &["-n", "k8s.io", "tasks", "delete", "-f", id],
                Duration::from_secs(60),
            );
        }
        // Snapshotter and sandbox mounts under the temp dir go before it.
        common::stop_containerd(self.child.take(), self.dir.path());
    }
}

/// What the kubelet would see of the pod's one container.
#[derive(Debug, PartialEq)]
struct PodResult {
    exit_code: i32,
    reason: String,
    stdout: String,
    stderr: String,
}

/// Splits a CRI log file (`TIMESTAMP STREAM TAG CONTENT` lines, TAG `F` for
/// a full line, `P` for a partial one) into its stdout and stderr.
fn parse_cri_log(log: &str) -> (String, String) {
    let (mut out, mut err) = (String::new(), String::new());
    for line in log.lines() {
        let mut f = line.splitn(4, ' ');
        let (Some(ts), Some(stream), Some(tag)) = (f.next(), f.next(), f.next()) else {
            panic!("not a CRI log line: {line:?}");
        };
        assert!(
            ts.contains('T') && (tag == "F" || tag == "P"),
            "not a CRI log line: {line:?}"
        );
        let content = f.next().unwrap_or("");
        let buf = match stream {
            "stdout" => &mut out,
            "stderr" => &mut err,
            other => panic!("unknown stream {other:?} in {line:?}"),
        };
        buf.push_str(content);
        if tag == "F" {
            buf.push('\n');
        }
    }
    (out, err)
}

/// Runs one pod with `handler` from sandbox to removal, checks that nothing
/// of it is left, and returns what its container did.
async fn run_pod(ctd: &Containerd, handler: &str) -> PodResult {
    let mut rt = ctd.client().await;
    let logs = ctd.dir.path().join("logs").join(handler);
    std::fs::create_dir_all(&logs).unwrap();
    let uid = format!(
        "{handler}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("cri-{handler}"),
            uid,
            namespace: "mu2-test".into(),
            attempt: 0,
        }),
        // Host network means the host's UTS namespace too: no hostname.
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    let sandbox = within(
        "RunPodSandbox",
        rt.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: handler.into(),
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("RunPodSandbox({handler}): {e}\n{}", tail(&ctd.log(), 30)))
    .into_inner()
    .pod_sandbox_id;

    // What the sandbox is: the pid the CRI plugin reports for it.
    let status = within(
        "PodSandboxStatus",
        rt.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.clone(),
            verbose: true,
        }),
    )
    .await
    .expect("PodSandboxStatus")
    .into_inner();
    let info: serde_json::Value =
        serde_json::from_str(status.info.get("info").expect("verbose sandbox info")).unwrap();
    assert_eq!(info["runtimeHandler"], handler, "{info}");
    let pid = info["pid"].as_u64().expect("sandbox pid");
    // runc's start returns before its init has exec'd the pause process.
    let deadline = Instant::now() + Duration::from_secs(10);
    let cmdline = loop {
        let c = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        if (!c.is_empty() && !c.contains("runc init")) || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "[{handler}] sandbox {sandbox}: runtimeType {}, pid {pid}: {cmdline}",
        info["runtimeType"]
    );
    if handler == "mu2" {
        assert!(
            cmdline.contains("qemu-system") && cmdline.contains(&vm_name_prefix(&sandbox)),
            "the mu2 sandbox's pid {pid} is not its VM: {cmdline}"
        );
    } else {
        assert!(
            cmdline.contains("sleep 2147483647"),
            "the runc sandbox's pid {pid} is not the pause process: {cmdline}"
        );
    }

    let container = within(
        "CreateContainer",
        rt.create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "hello".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: BUSYBOX.into(),
                    ..Default::default()
                }),
                command: vec!["sh".into(), "-c".into(), SCRIPT.into()],
                log_path: "hello.log".into(),
                linux: Some(LinuxContainerConfig {
                    security_context: Some(LinuxContainerSecurityContext {
                        namespace_options: Some(NamespaceOption {
                            network: NamespaceMode::Node as i32,
                            pid: NamespaceMode::Container as i32,
                            ipc: NamespaceMode::Pod as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config),
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("CreateContainer({handler}): {e}\n{}", tail(&ctd.log(), 30)))
    .into_inner()
    .container_id;

    within(
        "StartContainer",
        rt.start_container(StartContainerRequest {
            container_id: container.clone(),
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("StartContainer({handler}): {e}\n{}", tail(&ctd.log(), 30)));

    // The kubelet polls the status until the container has exited.
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        let s = within(
            "ContainerStatus",
            rt.container_status(ContainerStatusRequest {
                container_id: container.clone(),
                verbose: false,
            }),
        )
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("a container status");
        if s.state == ContainerState::ContainerExited as i32 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{handler}: container still {:?} after {DEADLINE:?}\n{}",
            s.state,
            tail(&ctd.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status.log_path,
        logs.join("hello.log").display().to_string()
    );
    let log = std::fs::read_to_string(&status.log_path).unwrap();
    eprintln!(
        "[{handler}] container {container}: exit {} ({}); log:\n{log}",
        status.exit_code, status.reason
    );
    let (stdout, stderr) = parse_cri_log(&log);

    within(
        "StopPodSandbox",
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox({handler}): {e}\n{}", tail(&ctd.log(), 30)));
    within(
        "RemovePodSandbox",
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox({handler}): {e}\n{}", tail(&ctd.log(), 30)));

    // Nothing left: no sandbox or container in the CRI, no task or container
    // in containerd, no shim, no VM, no mount of the pod.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut left = Vec::new();
        let pods = within(
            "ListPodSandbox",
            rt.list_pod_sandbox(ListPodSandboxRequest::default()),
        )
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
        left.extend(pods.iter().map(|p| format!("sandbox {}", p.id)));
        let ctrs = within(
            "ListContainers",
            rt.list_containers(ListContainersRequest::default()),
        )
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
        left.extend(ctrs.iter().map(|c| format!("container {}", c.id)));
        for what in ["tasks", "containers"] {
            let o = ctd.ctr(&["-n", "k8s.io", what, "ls", "-q"]);
            let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if !out.is_empty() {
                left.push(format!("ctr {what}: {out}"));
            }
        }
        left.extend(ctd.leftover_processes(&[&sandbox, &container]));
        left.extend(leftover_cgroups(&[&sandbox, &container]));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        left.extend(
            mounts
                .lines()
                .filter(|l| l.contains(&sandbox) || l.contains(&container))
                .map(|l| format!("mount {l}")),
        );
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{handler}: left behind: {left:#?}\n{}",
            tail(&ctd.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    PodResult {
        exit_code: status.exit_code,
        reason: status.reason,
        stdout,
        stderr,
    }
}

/// A containerd with the CRI plugin whose CRI service answers, and a runtime
/// to drive it; `None` (after saying why) when the test cannot run here.
/// Holds the one-pod-at-a-time lock.
struct Cri {
    ctd: Containerd,
    rt: tokio::runtime::Runtime,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Cri {
    fn start() -> Option<Cri> {
        if let Some(why) = common::skip_reason("CRI") {
            eprintln!("skipping: {why}");
            return None;
        }
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let ctd = Containerd::start();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut client = ctd.client().await;
            let v = within("Version", client.version(VersionRequest::default()))
                .await
                .unwrap_or_else(|e| panic!("CRI Version: {e}\n{}", tail(&ctd.log(), 30)))
                .into_inner();
            eprintln!(
                "CRI: {} {} (CRI {})",
                v.runtime_name, v.runtime_version, v.runtime_api_version
            );
        });
        Some(Cri {
            ctd,
            rt,
            _serial: serial,
        })
    }

    fn run_pod(&self, handler: &str) -> PodResult {
        self.rt.block_on(run_pod(&self.ctd, handler))
    }
}

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn cri_pod_with_runc() {
    let Some(cri) = Cri::start() else {
        return;
    };
    let got = cri.run_pod("runc");
    assert_eq!(
        got,
        PodResult {
            exit_code: 3,
            reason: "Error".into(),
            stdout: format!("hello from {}\n", host_release()),
            stderr: "err\n".into(),
        }
    );
}

#[test]
fn cri_pod_with_mu2_runs_in_a_vm_and_matches_runc() {
    let Some(cri) = Cri::start() else {
        return;
    };
    let want = cri.run_pod("runc");
    let got = cri.run_pod("mu2");
    // The guest kernel, not the host's: the container ran in the VM.
    let release = got
        .stdout
        .strip_prefix("hello from ")
        .and_then(|s| s.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("unexpected stdout {:?}", got.stdout));
    assert!(
        release.starts_with("6.1.0-") && release.ends_with("-amd64"),
        "uname -r in the mu2 container: {release:?}"
    );
    assert_ne!(release, host_release());
    assert_eq!(got.exit_code, want.exit_code);
    assert_eq!(got.reason, want.reason);
    assert_eq!(got.stderr, want.stderr);
    assert_eq!(
        got.stdout.replace(release, "RELEASE"),
        want.stdout.replace(&host_release(), "RELEASE")
    );
}
