//! mu2-gateway end to end: the real binary, real VMs, an HTTP client on a
//! TCP socket (and curl). After each test no VM of the gateway is left.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use common::*;

const ROUTE: &str = r#"
[[route]]
path = "/cgi"
image = "IMAGE"
command = ["/bin/sh", "/cgi/app"]
timeout = "60s"
env = { FROM_ROUTE = "yes" }
max_body = "2M"
concurrency = 2
"#;

#[test]
fn get_with_a_query_and_headers_in_and_out() {
    let _s = serial();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let gw = start(&rootfs, "", ROUTE);
    let r = request(
        gw.addr,
        "GET",
        "/cgi/env?a=1&b=two%20words",
        &[("X-In", "hello there"), ("Authorization", "Basic c2VjcmV0")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("x-echo"), Some("hello there"));
    assert!(r.header("x-mu2-vm").unwrap().starts_with(&gw.vm_prefix));
    assert!(r.header("x-request-id").is_some());
    // No length known: chunked.
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let env = r.text();
    let var = |n| env_var(&env, n);
    assert_eq!(var("QUERY_STRING").as_deref(), Some("a=1&b=two%20words"));
    assert_eq!(var("REQUEST_METHOD").as_deref(), Some("GET"));
    assert_eq!(var("SCRIPT_NAME").as_deref(), Some("/cgi"));
    assert_eq!(var("PATH_INFO").as_deref(), Some("/env"));
    assert_eq!(var("GATEWAY_INTERFACE").as_deref(), Some("CGI/1.1"));
    assert_eq!(var("SERVER_PROTOCOL").as_deref(), Some("HTTP/1.1"));
    assert_eq!(var("SERVER_NAME").as_deref(), Some("test.local"));
    assert_eq!(var("SERVER_PORT"), Some(gw.addr.port().to_string()));
    assert_eq!(var("REMOTE_ADDR").as_deref(), Some("127.0.0.1"));
    assert_eq!(var("HTTP_X_IN").as_deref(), Some("hello there"));
    assert_eq!(var("HTTP_AUTHORIZATION"), None);
    assert_eq!(var("FROM_IMAGE").as_deref(), Some("yes"));
    assert_eq!(var("FROM_ROUTE").as_deref(), Some("yes"));
    assert_eq!(var("CONTENT_LENGTH"), None);
    let h = get(gw.addr, "/healthz");
    assert_eq!((h.status, h.text().as_str()), (200, "ok\n"));
    let m = get(gw.addr, "/metrics").text();
    assert!(
        m.contains("mu2_gateway_requests_total{route=\"/cgi\",status=\"200\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("mu2_gateway_request_duration_seconds_count{route=\"/cgi\"} 1"),
        "{m}"
    );
    assert_eq!(get(gw.addr, "/nowhere").status, 404);
    assert!(gw.logged("access "), "no access log line");
    gw.assert_no_vms();
}

#[test]
fn post_of_one_mib_streamed_and_chunked() {
    let _s = serial();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let gw = start(&rootfs, "", ROUTE);
    let body: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let want = format!("{} {}\n", body.len(), sha256_hex(&body));
    let r = request(
        gw.addr,
        "POST",
        "/cgi/post",
        &[("Content-Type", "application/octet-stream")],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), want);
    // curl, sending the same body chunked (read whole by the gateway).
    let file = gw.dir.path().join("body");
    std::fs::write(&file, &body).unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "120",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
        ])
        .arg(format!("@{}", file.display()))
        .arg(format!("http://{}/cgi/post", gw.addr))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    gw.assert_no_vms();
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(b))
}

#[test]
fn status_and_location() {
    let _s = serial();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let gw = start(&rootfs, "", ROUTE);
    let r = request(gw.addr, "GET", "/cgi/status", &[("X-In", "v1")], b"");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("location"), Some("/made/42"));
    assert_eq!(r.header("x-out"), Some("v1"));
    assert_eq!(r.header("status"), None);
    assert_eq!(r.text(), "made\n");
    let r = get(gw.addr, "/cgi/redirect");
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("https://example.org/elsewhere"));
    let r = get(gw.addr, "/cgi/unknown");
    assert_eq!(r.status, 404);
    gw.assert_no_vms();
}

#[test]
fn every_request_gets_a_fresh_vm() {
    let _s = serial();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let gw = start(&rootfs, "", ROUTE);
    let a = get(gw.addr, "/cgi/write");
    let b = get(gw.addr, "/cgi/write");
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(a.text(), "fresh\n");
    assert_eq!(
        b.text(),
        "fresh\n",
        "the second request saw the first one's file"
    );
    assert_ne!(a.header("x-mu2-vm"), b.header("x-mu2-vm"));
    let x = get(gw.addr, "/cgi/random");
    let y = get(gw.addr, "/cgi/random");
    assert_eq!((x.status, y.status), (200, 200));
    assert_eq!(x.text().trim().len(), 32, "{}", x.text());
    assert_ne!(x.text(), y.text(), "two VMs read the same /dev/urandom");
    // Nor did the image's rootfs on the host change.
    gw.assert_no_vms();
}

const SHORT: &str = r#"
[[route]]
path = "/short"
image = "IMAGE"
command = ["/bin/sh", "/cgi/app"]
timeout = "4s"
max_body = "1K"
"#;

#[test]
fn past_the_deadline_is_504_and_the_vm_is_gone() {
    let _s = serial();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let gw = start(&rootfs, "", SHORT);
    let t0 = Instant::now();
    let r = get(gw.addr, "/short/sleep");
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    gw.assert_no_vms();
    // A deadline passing mid-body cuts the response: not a clean end.
    let mut s = connect(gw.addr);
    send_head(&mut s, "GET", "/short/slow", &[], None);
    let e = read_response(&mut s).unwrap_err();
    assert!(!e.is_empty());
    gw.assert_no_vms();
}

#[test]
fn a_body_over_the_limit_is_413() {
    let _s = serial();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let gw = start(&rootfs, "", SHORT);
    let r = request(gw.addr, "POST", "/short/post", &[], &[b'x'; 2048]);
    assert_eq!(r.status, 413, "{}", r.text());
    // Chunked, without a length: refused once it passes the limit.
    let mut s = connect(gw.addr);
    s.write_all(b"POST /short/post HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    // The gateway may answer and stop reading as soon as the limit is
    // passed: a write after that may fail, the answer is still there.
    let mut chunked = Vec::new();
    for _ in 0..3 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b'y'; 0x400]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let _ = s.write_all(&chunked);
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 413);
    let m = get(gw.addr, "/metrics").text();
    assert!(
        m.contains("mu2_gateway_rejections_total{route=\"/short\",reason=\"body_too_large\"} 2"),
        "{m}"
    );
    // No VM was started for either.
    assert!(
        m.contains("mu2_gateway_vm_starts_total{how=\"boot\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("mu2_gateway_vm_starts_total{how=\"restore\"} 0"),
        "{m}"
    );
    gw.assert_no_vms();
}

#[test]
fn a_command_without_a_valid_response_is_502() {
    let _s = serial();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let gw = start(&rootfs, "", ROUTE);
    let r = get(gw.addr, "/cgi/crash");
    assert_eq!(r.status, 502, "{}", r.text());
    let r = get(gw.addr, "/cgi/garbage");
    assert_eq!(r.status, 502, "{}", r.text());
    // The crash's stderr reached the log, with its request id.
    assert!(gw.logged("stderr: not a header"));
    gw.assert_no_vms();
}

const ONE: &str = r#"
[[route]]
path = "/one"
image = "IMAGE"
command = ["/bin/sh", "/cgi/app"]
timeout = "60s"
concurrency = 1
queue = 0
queue_timeout = "2s"
"#;

/// Waits until `n` VMs of the gateway run.
fn await_vms(gw: &Gateway, n: usize) {
    let end = Instant::now() + Duration::from_secs(60);
    while vms_running(&gw.vm_prefix) < n {
        assert!(Instant::now() < end, "no vm started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn overload_is_503_with_retry_after_then_recovers() {
    let _s = serial();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let gw = start(&rootfs, "", ONE);
    let addr = gw.addr;
    let busy = std::thread::spawn(move || get(addr, "/one/nap"));
    await_vms(&gw, 1);
    let r = get(gw.addr, "/one/env");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("2"));
    let first = busy.join().unwrap();
    assert_eq!((first.status, first.text().as_str()), (200, "rested\n"));
    // Recovery: the slot frees once the first VM is gone (its teardown
    // follows its response by a moment); until then 503 with Retry-After.
    let end = Instant::now() + Duration::from_secs(20);
    let mut refused = 1;
    loop {
        let r = get(gw.addr, "/one/env");
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.header("retry-after").is_some());
        refused += 1;
        assert!(Instant::now() < end, "no recovery");
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = get(gw.addr, "/metrics").text();
    let want =
        format!("mu2_gateway_rejections_total{{route=\"/one\",reason=\"queue_full\"}} {refused}");
    assert!(m.contains(&want), "{want}: {m}");
    gw.assert_no_vms();
}

#[test]
fn a_client_hanging_up_kills_the_vm() {
    let _s = serial();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let gw = start(&rootfs, "", ROUTE);
    // Mid-response: the body streams ticks until the client leaves.
    let mut s = connect(gw.addr);
    send_head(&mut s, "GET", "/cgi/slow", &[], None);
    {
        let mut r = BufReader::new(&mut s);
        let (status, _) = read_head(&mut r).unwrap();
        assert_eq!(status, 200);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
    }
    drop(s);
    let t0 = Instant::now();
    gw.assert_no_vms();
    assert!(t0.elapsed() < Duration::from_secs(15));
    // Before the head: the command sleeps, the client leaves.
    let mut s = connect(gw.addr);
    send_head(&mut s, "GET", "/cgi/sleep", &[], None);
    await_vms(&gw, 1);
    drop(s);
    gw.assert_no_vms();
    assert!(gw.logged("killed"));
}

#[test]
fn sigterm_drains_in_flight_requests() {
    let _s = serial();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let mut gw = start(&rootfs, "grace = \"60s\"", ONE);
    let addr = gw.addr;
    let busy = std::thread::spawn(move || get(addr, "/one/nap"));
    await_vms(&gw, 1);
    let t0 = Instant::now();
    let pid = nix::unistd::Pid::from_raw(gw.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let r = busy.join().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "rested\n"));
    let status = gw.terminate(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(30));
    // It no longer listens.
    assert!(std::net::TcpStream::connect(addr).is_err());
    gw.assert_no_vms();
}

#[test]
fn sigterm_kills_what_outlives_the_grace_period() {
    let _s = serial();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let mut gw = start(&rootfs, "grace = \"2s\"", ONE);
    let addr = gw.addr;
    let busy = std::thread::spawn(move || {
        let mut s = connect(addr);
        send_head(&mut s, "GET", "/one/sleep", &[], None);
        read_response(&mut s)
    });
    await_vms(&gw, 1);
    let pid = nix::unistd::Pid::from_raw(gw.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = gw.terminate(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    // Answered 503 or cut: either way it did not wait 600 s.
    match busy.join().unwrap() {
        Ok(r) => assert_eq!(r.status, 503, "{}", r.text()),
        Err(e) => eprintln!("cut: {e}"),
    }
    gw.assert_no_vms();
}

/// Polls `/metrics` until `line` is in it.
fn await_metric(gw: &Gateway, line: &str) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if get(gw.addr, "/metrics").text().contains(line) {
            return;
        }
        assert!(Instant::now() < end, "no {line:?} in /metrics");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn warm_vms_serve_one_request_each_and_refill() {
    let _s = serial();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let routes = r#"
[[route]]
path = "/warm"
image = "IMAGE"
command = ["/bin/sh", "/cgi/app"]
timeout = "60s"
concurrency = 1
warm = 1
"#;
    let mut gw = start(&rootfs, "", routes);
    let warm_prefix = format!("{}w0-", gw.vm_prefix);
    await_metric(&gw, "mu2_gateway_vms_warm 1\n");
    let a = get(gw.addr, "/warm/random");
    assert_eq!(a.status, 200, "{}", a.text());
    let vm_a = a.header("x-mu2-vm").unwrap().to_string();
    assert!(vm_a.starts_with(&warm_prefix), "{vm_a}");
    // The set refills behind it: the next request gets another warm VM.
    await_metric(&gw, "mu2_gateway_vms_warm 1\n");
    let b = get(gw.addr, "/warm/write");
    assert_eq!((b.status, b.text().as_str()), (200, "fresh\n"));
    let vm_b = b.header("x-mu2-vm").unwrap().to_string();
    assert!(vm_b.starts_with(&warm_prefix), "{vm_b}");
    assert_ne!(vm_a, vm_b);
    await_metric(&gw, "mu2_gateway_vms_warm 1\n");
    // The warm VM only, once the last request's VM is torn down.
    let end = Instant::now() + Duration::from_secs(15);
    while vms_running(&gw.vm_prefix) != 1 {
        assert!(
            Instant::now() < end,
            "{} VMs run, not the one warm VM",
            vms_running(&gw.vm_prefix)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGTERM takes the idle warm VM too.
    assert!(gw.terminate(Duration::from_secs(60)).success());
    gw.assert_no_vms();
}

#[test]
fn the_memory_budget_bounds_vms_across_routes() {
    let _s = serial();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    // One default guest (256 MiB) fits, two do not.
    let routes = r#"
[[route]]
path = "/a"
image = "IMAGE"
command = ["/bin/sh", "/cgi/app"]
queue_timeout = "1s"

[[route]]
path = "/b"
image = "IMAGE"
command = ["/bin/sh", "/cgi/app"]
queue_timeout = "1s"
"#;
    let gw = start(&rootfs, "memory_budget = \"300M\"", routes);
    let addr = gw.addr;
    let busy = std::thread::spawn(move || get(addr, "/a/nap"));
    await_vms(&gw, 1);
    let r = get(gw.addr, "/b/env");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(busy.join().unwrap().status, 200);
    assert_eq!(get(gw.addr, "/b/env").status, 200);
    let m = get(gw.addr, "/metrics").text();
    assert!(
        m.contains("mu2_gateway_rejections_total{route=\"/b\",reason=\"queue_timeout\"} 1"),
        "{m}"
    );
    gw.assert_no_vms();
}

#[test]
fn keep_alive_requests_each_get_their_own_vm() {
    let _s = serial();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let gw = start(&rootfs, "", ROUTE);
    // curl reuses one connection for both.
    let url = format!("http://{}/cgi/random", gw.addr);
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "120", &url, &url])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_ne!(lines[0], lines[1]);
    // HEAD: the head only.
    let r = request(gw.addr, "HEAD", "/cgi/status", &[], b"");
    assert_eq!(r.status, 201);
    gw.assert_no_vms();
}

#[test]
fn a_containerd_image_is_read_through_its_api() {
    let _s = serial();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let Some(ctd) = Containerd::start() else {
        return;
    };
    ctd.import_test_image(&rootfs, "gwtest", "c1");
    let top = format!(
        "[containerd]\naddress = \"{}\"\nnamespace = \"gwtest\"\n",
        ctd.sock().display()
    );
    let routes = format!(
        "[[route]]\npath = \"/c\"\nimage = \"containerd:{CONTAINERD_REPO}:c1\"\ntimeout = \"60s\"\n"
    );
    // No command: the image's Cmd (/bin/sh /cgi/app).
    let gw = start(&rootfs, &top, &routes);
    let r = get(gw.addr, "/c/env");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env_var(&r.text(), "FROM_IMAGE").as_deref(), Some("yes"));
    gw.assert_no_vms();
    drop(gw);
    // An image containerd does not have: a start-up error naming it.
    let routes =
        format!("[[route]]\npath = \"/c\"\nimage = \"containerd:{CONTAINERD_REPO}:nope\"\n");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        format!(
            "cache_dir = \"{}\"\n{top}{routes}",
            dir.path().join("cache").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mu2-gateway"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope") && err.contains("(line 5)"), "{err}");
}
