//! mu2-gateway end to end: the real binary, real VMs, a real HTTP client.

mod common;

use std::time::{Duration, Instant};

use common::*;

const ROUTE: &str = r#"
[[route]]
path = "/cgi"
image = "IMAGE"
command = ["/bin/sh", "/cgi/app"]
timeout = "60s"
env = { FROM_ROUTE = "yes" }
concurrency = 2
"#;

#[test]
fn get_with_a_query_and_headers_in_and_out() {
    let _s = serial();
    let Some(rootfs) = busybox_rootfs() else { return };
    let gw = start(&rootfs, "", ROUTE);
    let r = request(gw.addr, "GET", "/cgi/env?a=1&b=two%20words", &[("X-In", "hello there")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("x-echo"), Some("hello there"));
    assert!(r.header("x-mu2-vm").unwrap().starts_with(&gw.vm_prefix));
    assert!(r.header("x-request-id").is_some());
    let env = r.text();
    assert_eq!(env_var(&env, "QUERY_STRING").as_deref(), Some("a=1&b=two%20words"));
    assert_eq!(env_var(&env, "REQUEST_METHOD").as_deref(), Some("GET"));
    assert_eq!(env_var(&env, "SCRIPT_NAME").as_deref(), Some("/cgi"));
    assert_eq!(env_var(&env, "PATH_INFO").as_deref(), Some("/env"));
    assert_eq!(env_var(&env, "GATEWAY_INTERFACE").as_deref(), Some("CGI/1.1"));
    assert_eq!(env_var(&env, "SERVER_PROTOCOL").as_deref(), Some("HTTP/1.1"));
    assert_eq!(env_var(&env, "SERVER_NAME").as_deref(), Some("test.local"));
    assert_eq!(env_var(&env, "SERVER_PORT"), Some(gw.addr.port().to_string()));
    assert_eq!(env_var(&env, "REMOTE_ADDR").as_deref(), Some("127.0.0.1"));
    assert_eq!(env_var(&env, "HTTP_X_IN").as_deref(), Some("hello there"));
    assert_eq!(env_var(&env, "FROM_IMAGE").as_deref(), Some("yes"));
    assert_eq!(env_var(&env, "FROM_ROUTE").as_deref(), Some("yes"));
    assert_eq!(env_var(&env, "CONTENT_LENGTH"), None);
    gw.assert_no_vms();
}
