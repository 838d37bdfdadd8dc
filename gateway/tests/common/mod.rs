//! Harness for the gateway's end-to-end tests: a test image written as an
//! OCI image layout (the busybox rootfs of `scripts/build-test-bundles`
//! plus a CGI script), the real `mu2-gateway` binary on a config of the
//! test's own, a small HTTP/1.1 client over a TCP socket (so that a test
//! can hang up mid-response), and the check that no VM of the gateway is
//! left behind.
//!
//! Tests take [`serial`] so that one gateway runs at a time, and their
//! routes allow at most 2 VMs at once: every VM is a TCG guest on a small
//! host shared with other work. Every wait has a deadline.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Longest a test waits for one response.
pub const RESPONSE_DEADLINE: Duration = Duration::from_secs(120);
/// Longest the gateway may take to start listening (it unpacks the image).
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// The CGI program of the test image: what it does depends on PATH_INFO.
pub const APP: &str = r#"#!/bin/sh
case "$PATH_INFO" in
/env)
    printf 'Content-Type: text/plain\r\nX-Echo: %s\r\n\r\n' "$HTTP_X_IN"
    env | sort
    ;;
/post)
    n=$(head -c "$CONTENT_LENGTH" | tee /tmp/body | wc -c)
    printf 'Content-Type: text/plain\n\n%s %s\n' "$n" "$(sha256sum /tmp/body | cut -d' ' -f1)"
    ;;
/status)
    printf 'Status: 201 Created\nLocation: /made/42\nX-Out: %s\nContent-Type: text/plain\n\nmade\n' "$HTTP_X_IN"
    ;;
/redirect)
    printf 'Location: https://example.org/elsewhere\n\n'
    ;;
/write)
    printf 'Content-Type: text/plain\n\n'
    if [ -e /marker ]; then echo seen; else echo fresh; fi
    echo x > /marker
    ;;
/random)
    printf 'Content-Type: text/plain\n\n'
    head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'
    echo
    ;;
/sleep)
    sleep 600
    ;;
/nap)
    sleep 3
    printf 'Content-Type: text/plain\n\nrested\n'
    ;;
/crash)
    echo 'not a header' >&2
    kill -SEGV $$
    ;;
/garbage)
    echo 'this is no header block'
    echo
    ;;
/slow)
    printf 'Content-Type: text/plain\n\n'
    while true; do echo tick; sleep 0.2; done
    ;;
*)
    printf 'Status: 404 Not Found\nContent-Type: text/plain\n\nno such thing\n'
    ;;
esac
"#;

/// The name `ctr images import` gives the test image (with its tag).
pub const CONTAINERD_REPO: &str = "docker.io/mu2/gateway-test";

/// A private containerd on a socket of its own, root and state in a temp
/// dir; stopped when dropped.
pub struct Containerd {
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Containerd {
    /// `None` (after saying why) when containerd is not installed.
    pub fn start() -> Option<Containerd> {
        for bin in ["containerd", "ctr"] {
            let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .any(|d| d.join(bin).is_file());
            if !found {
                eprintln!("skipping: {bin} is not installed");
                return None;
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("mu2-gw-ctd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n",
            d.join("root").display(),
            d.join("state").display(),
            d.join("c.sock").display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let ctd = Containerd { child, dir };
        let end = Instant::now() + Duration::from_secs(30);
        while !ctd.ctr(&["version"]).status.success() {
            assert!(Instant::now() < end, "containerd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(ctd)
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("-a")
            .arg(self.sock())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Imports the test image (an OCI archive of [`write_image`]) into
    /// `namespace`, tagged `tag`, without unpacking it to a snapshot.
    pub fn import_test_image(&self, rootfs: &Path, namespace: &str, tag: &str) {
        let layout = self.dir.path().join("layout");
        std::fs::create_dir_all(&layout).unwrap();
        write_image(&layout, rootfs, tag);
        let archive = self.dir.path().join("image.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        b.append_dir_all(".", &layout).unwrap();
        b.into_inner().unwrap();
        let out = self.ctr(&[
            "-n",
            namespace,
            "images",
            "import",
            "--no-unpack",
            archive.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "ctr import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Holds the tests one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The busybox rootfs, or `None` (after saying why) when the tests cannot
/// run here.
pub fn busybox_rootfs() -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: mu2-gateway end-to-end tests need root (QEMU, 9p shares)");
        return None;
    }
    let bundles = std::env::var_os("MU2_TEST_BUNDLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/bundles"));
    let rootfs = bundles.join("busybox/rootfs");
    assert!(
        rootfs.join("bin/busybox").is_file(),
        "no busybox rootfs at {} (run scripts/build-test-bundles)",
        rootfs.display()
    );
    Some(rootfs)
}

fn blob(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let hex = format!("{:x}", Sha256::digest(bytes));
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

/// Writes an OCI image layout at `dir`, tagged `tag`: one layer of the
/// busybox rootfs, one of `/cgi/app`.
pub fn write_image(dir: &Path, rootfs: &Path, tag: &str) {
    let mut base = tar::Builder::new(Vec::new());
    base.follow_symlinks(false);
    base.append_dir_all(".", rootfs).unwrap();
    let base = base.into_inner().unwrap();
    let mut app = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    app.append_data(&mut h, "cgi", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(APP.len() as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    app.append_data(&mut h, "cgi/app", APP.as_bytes()).unwrap();
    let app = app.into_inner().unwrap();
    let layer = |b: &[u8]| {
        let (digest, size) = blob(dir, b);
        serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size})
    };
    let layers = vec![layer(&base), layer(&app)];
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin:/usr/bin", "FROM_IMAGE=yes"], "Cmd": ["/bin/sh", "/cgi/app"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    let (cd, cs) = blob(dir, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": layers,
    });
    let (md, ms) = blob(dir, manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": tag,
                "io.containerd.image.name": format!("{CONTAINERD_REPO}:{tag}")}}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// A running `mu2-gateway` and what it logged.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
    /// VM ids of this gateway start with this.
    pub vm_prefix: String,
}

/// Starts a gateway on `routes` (TOML `[[route]]` tables whose `image` is
/// written as `IMAGE`), with the test image.
pub fn start(rootfs: &Path, top: &str, routes: &str) -> Gateway {
    let dir = tempfile::Builder::new()
        .prefix("mu2-gw-test-")
        .tempdir()
        .unwrap();
    let image = dir.path().join("image");
    std::fs::create_dir(&image).unwrap();
    write_image(&image, rootfs, "v1");
    let routes = routes.replace("IMAGE", &format!("oci:{}:v1", image.display()));
    let config = format!(
        "listen = \"127.0.0.1:0\"\ncache_dir = \"{}\"\n{top}\n{routes}",
        dir.path().join("cache").display()
    );
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mu2-gateway"))
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mu2-gateway");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let l = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(a) = line.split("listening on http://").nth(1) {
                let _ = tx.send(a.trim().to_string());
            }
            eprintln!("gateway: {line}");
            l.lock().unwrap().push(line);
        }
    });
    let addr = match rx.recv_timeout(START_DEADLINE) {
        Ok(a) => a.parse().unwrap(),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the gateway did not listen within {START_DEADLINE:?}: {:?}",
                log.lock().unwrap()
            );
        }
    };
    let vm_prefix = format!("gw-{}-", child.id());
    Gateway {
        child,
        addr,
        log,
        dir,
        vm_prefix,
    }
}

impl Gateway {
    /// Sends SIGTERM and waits (up to `within`) for the gateway to exit.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the gateway did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// No QEMU and no record of any VM of this gateway (waiting a little
    /// for a killed VM to be reaped).
    pub fn assert_no_vms(&self) {
        assert_no_vms(&self.vm_prefix);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.terminate(Duration::from_secs(60));
        }
    }
}

/// Processes whose command line mentions `needle`.
pub fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push((pid, cmd));
            }
        }
    }
    found
}

/// No QEMU of a VM whose id starts with `prefix`, and no record of one.
pub fn assert_no_vms(prefix: &str) {
    let mode = mu2_microvm::jail::JailMode::load().expect("the mu2 configuration");
    let records = mu2_microvm::record::RecordDir::for_mode(&mode);
    let needle = format!("mu2-{prefix}");
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let procs = processes_with(&needle);
        let owner = owner_pid(prefix);
        // Its own VMs by their ids; leased ones (named by the pool) by
        // their records' owner.
        let recs: Vec<String> = records
            .list()
            .into_iter()
            .filter(|r| {
                r.id.starts_with(prefix)
                    || r.record.as_ref().is_ok_and(|r| Some(r.owner.pid) == owner)
            })
            .map(|r| r.id)
            .collect();
        if procs.is_empty() && recs.is_empty() {
            return;
        }
        assert!(
            Instant::now() < end,
            "left behind: processes {procs:?}, records {recs:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The gateway pid in a VM id prefix `gw-PID-`.
fn owner_pid(prefix: &str) -> Option<u32> {
    prefix
        .strip_prefix("gw-")?
        .trim_end_matches('-')
        .parse()
        .ok()
}

/// The VMs of the gateway of `prefix` running now: those whose record it
/// owns with a live VMM (its own, and those it leased from a pool, which
/// keep the pool's ids).
pub fn vms_running(prefix: &str) -> usize {
    let mode = mu2_microvm::jail::JailMode::load().expect("the mu2 configuration");
    let records = mu2_microvm::record::RecordDir::for_mode(&mode);
    let owner = owner_pid(prefix);
    records
        .list()
        .into_iter()
        .filter_map(|r| r.record.ok())
        .filter(|r| (r.id.starts_with(prefix) || Some(r.owner.pid) == owner) && r.vmm_alive())
        .count()
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request (`Connection: close`) and reads the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = connect(addr);
    let length = (!body.is_empty() || !matches!(method, "GET" | "HEAD")).then_some(body.len());
    send_head(&mut s, method, target, headers, length);
    s.write_all(body).unwrap();
    read_response(&mut s).unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

pub fn get(addr: SocketAddr, target: &str) -> Response {
    request(addr, "GET", target, &[], b"")
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(RESPONSE_DEADLINE)).unwrap();
    s.set_write_timeout(Some(RESPONSE_DEADLINE)).unwrap();
    s
}

/// The request line and head; `length`: a Content-Length to send.
pub fn send_head(
    s: &mut TcpStream,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    length: Option<usize>,
) {
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(n) = length {
        head.push_str(&format!("Content-Length: {n}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
}

/// Reads a response head from `s`: status and headers.
pub fn read_head(
    r: &mut BufReader<&mut TcpStream>,
) -> Result<(u16, Vec<(String, String)>), String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).map_err(|e| e.to_string())?;
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| format!("bad header {l:?}"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok((status, headers))
}

/// Reads a whole response; a body cut short is an error.
pub fn read_response(s: &mut TcpStream) -> Result<Response, String> {
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r)?;
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).map_err(|e| e.to_string())?;
            let n = usize::from_str_radix(size.trim(), 16)
                .map_err(|_| format!("bad chunk size {size:?} (the body was cut)"))?;
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).map_err(|e| e.to_string())?;
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = find("content-length") {
        let n: usize = n.parse().map_err(|_| "bad content-length".to_string())?;
        body.resize(n, 0);
        r.read_exact(&mut body).map_err(|e| e.to_string())?;
    } else {
        r.read_to_end(&mut body).map_err(|e| e.to_string())?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// The value of a `NAME=value` line in an `env` dump.
pub fn env_var(dump: &str, name: &str) -> Option<String> {
    dump.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .map(str::to_string)
}
