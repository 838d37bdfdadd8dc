//! `mu2 run` end to end: the container's security settings are honoured
//! inside the guest as runc honours them on the host, for what `ctr run`
//! cannot express (ambient capabilities, sysctls, custom masked and
//! read-only paths, seccomp with and without no_new_privs, the cgroup and
//! the device policy); runc running the same config.json is the oracle
//! where the two can be compared. What a VM cannot honour is refused by
//! name before any VM starts. Run with `--test-threads=2` under the VM lock.

mod common;

use common::*;
use serde_json::json;

/// The outputs under mu2 and under runc are the same.
fn same_as_runc(b: &TestBundle) -> Output {
    let got = run(b);
    let want = runc(b);
    assert_eq!(
        (got.code(), got.stdout_str(), got.stderr_str()),
        (want.code(), want.stdout_str(), want.stderr_str()),
        "mu2 (left) and runc (right) differ"
    );
    got
}

#[test]
fn a_user_with_an_ambient_capability_binds_port_80_as_under_runc() {
    let Some(base) = setup() else { return };
    let mut b = TestBundle::new(
        &base,
        &["sh", "-c", "grep Cap /proc/self/status; mu2-probe bind 80"],
    );
    b.config["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    let bind = ["CAP_NET_BIND_SERVICE"];
    b.config["process"]["capabilities"] = json!({
        "bounding": bind, "effective": bind, "permitted": bind, "inheritable": bind, "ambient": bind
    });
    let out = same_as_runc(&b);
    assert_eq!(out.code(), 0, "{}", out.stderr_str());
    assert!(
        out.stdout_str().contains("CapAmb:\t0000000000000400\n"),
        "{}",
        out.stdout_str()
    );
    assert!(out.stdout_str().ends_with("bound port 80\n"));

    // Without the ambient set the same user cannot.
    b.config["process"]["capabilities"]["ambient"] = json!([]);
    let out = same_as_runc(&b);
    assert_eq!(out.code(), 2);
    assert!(
        out.stderr_str().contains("bind port 80"),
        "{}",
        out.stderr_str()
    );
}

#[test]
fn root_without_capabilities_has_none_as_under_runc() {
    let Some(base) = setup() else { return };
    let mut b = TestBundle::new(&base, &["grep", "Cap", "/proc/self/status"]);
    b.config["process"]
        .as_object_mut()
        .unwrap()
        .remove("capabilities");
    let out = same_as_runc(&b);
    assert_eq!(
        out.stdout_str(),
        "CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
         CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\n"
    );
}

#[test]
fn sysctls_oom_score_adj_masked_and_readonly_paths_match_runc() {
    let Some(base) = setup() else { return };
    let mut b = TestBundle::new(
        &base,
        &[
            "sh",
            "-c",
            "cat /proc/self/oom_score_adj; cat /proc/sys/kernel/shm_rmid_forced; \
             echo 0 > /proc/sys/kernel/shm_rmid_forced; \
             wc -c < /etc/hostname; ls /home; touch /etc/x; ls /etc; echo done",
        ],
    );
    b.config["linux"]["sysctl"] = json!({"kernel.shm_rmid_forced": "1"});
    b.config["process"]["oomScoreAdj"] = json!(500);
    b.config["linux"]["maskedPaths"] = json!(["/etc/hostname", "/home", "/no/such/path"]);
    b.config["linux"]["readonlyPaths"] = json!(["/proc/sys", "/etc", "/no/such/dir"]);
    let out = same_as_runc(&b);
    assert_eq!(out.code(), 0, "{}", out.stderr_str());
    assert!(
        out.stdout_str().starts_with("500\n1\n0\n"),
        "{}",
        out.stdout_str()
    );
    assert!(out.stderr_str().contains("Read-only file system"));
}

#[test]
fn a_sysctl_the_guest_lacks_is_refused_by_name() {
    let Some(base) = setup() else { return };
    let mut b = TestBundle::new(&base, &["true"]);
    b.config["linux"]["sysctl"] = json!({"kernel.mu2_no_such_knob": "1"});
    let out = run(&b);
    assert_eq!(out.code(), 125, "{}", out.stderr_str());
    assert!(
        out.stderr_str()
            .contains("sysctl kernel.mu2_no_such_knob does not exist in the guest kernel"),
        "{}",
        out.stderr_str()
    );
}

#[test]
fn seccomp_is_installed_with_and_without_no_new_privs_as_under_runc() {
    let Some(base) = setup() else { return };
    let mut b = TestBundle::new(
        &base,
        &[
            "sh",
            "-c",
            "mu2-probe keyctl; grep '^Seccomp:' /proc/self/status; id -u",
        ],
    );
    b.config["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    for nnp in [true, false] {
        b.config["process"]["noNewPrivileges"] = json!(nnp);
        let out = same_as_runc(&b);
        assert_eq!(out.code(), 0, "{}", out.stderr_str());
        assert_eq!(
            out.stdout_str(),
            "keyctl: EPERM: Operation not permitted\nSeccomp:\t2\n1000\n",
            "no_new_privs {nnp}"
        );
    }
}

#[test]
fn the_agents_ports_stay_closed_even_to_an_allow_all_device_policy() {
    let Some(base) = setup() else { return };
    let mut b = TestBundle::new(
        &base,
        &[
            "sh",
            "-c",
            "maj=$(cut -d: -f1 /sys/class/virtio-ports/vport0p1/dev); \
             mknod /dev/port1 c $maj 1 && echo made; \
             cat /dev/port1; echo x > /dev/port1; \
             echo x > /dev/null && echo null works",
        ],
    );
    let caps = ["CAP_MKNOD", "CAP_DAC_OVERRIDE", "CAP_SYS_ADMIN"];
    b.config["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps});
    b.config["linux"]["resources"] = json!({"devices": [{"allow": true, "access": "rwm"}]});
    let out = run(&b);
    assert_eq!(out.code(), 0, "{}", out.stderr_str());
    assert_eq!(out.stdout_str(), "made\nnull works\n");
    assert_eq!(
        out.stderr_str(),
        "cat: can't open '/dev/port1': Operation not permitted\n\
         sh: can't create /dev/port1: Operation not permitted\n"
    );
}

#[test]
fn the_container_cannot_leave_its_cgroup_or_lift_its_limits() {
    let Some(base) = setup() else { return };
    // A writable cgroup mount, root with the default capabilities: the
    // namespace and nsdelegate hold, not just a read-only mount.
    let mut b = TestBundle::new(
        &base,
        &[
            "sh",
            "-c",
            "cat /proc/self/cgroup; \
             echo $$ > /sys/fs/cgroup/cgroup.procs; \
             echo $$ > \"/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/../cgroup.procs\"; \
             mount -t cgroup2 none /tmp; \
             cat /proc/self/cgroup; \
             echo max > /sys/fs/cgroup/memory.max || echo limit kept; \
             cat /sys/fs/cgroup/memory.max; \
             exec mu2-probe alloc 200",
        ],
    );
    let mut mounts = b.config["mounts"].as_array().unwrap().clone();
    mounts.push(
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
        "options": ["nosuid", "noexec", "nodev", "relatime", "rw"]}),
    );
    b.config["mounts"] = json!(mounts);
    b.config["linux"]["resources"]["memory"] = json!({"limit": 64 * 1024 * 1024});
    let out = run(&b);
    assert_eq!(out.code(), 137, "{}", out.stderr_str());
    assert_eq!(out.stdout_str(), "0::/\n0::/\nlimit kept\n67108864\n");
    let err = out.stderr_str();
    assert!(
        err.contains("write error: Operation not permitted"),
        "{err}"
    );
    assert!(err.contains("mount: permission denied"), "{err}");
}

#[test]
fn what_a_vm_cannot_honour_is_refused_before_any_vm() {
    let Some(base) = setup() else { return };
    let cases = [
        (
            json!({"linux": {"uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}}),
            "linux.uidMappings",
        ),
        (
            json!({"linux": {"namespaces": [{"type": "network", "path": "/proc/1/ns/net"}]}}),
            "path /proc/1/ns/net",
        ),
        (
            json!({"hooks": {"createContainer": [{"path": "/bin/true"}]}}),
            "hooks.createContainer",
        ),
        (
            json!({"mounts": [{"destination": "/x", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup"]}]}),
            "tmpcopyup",
        ),
        (
            json!({"linux": {"sysctl": {"kernel/../../etc": "1"}}}),
            "kernel/../../etc",
        ),
    ];
    for (patch, name) in cases {
        let mut b = TestBundle::new(&base, &["true"]);
        for (k, v) in patch.as_object().unwrap() {
            match (b.config.get_mut(k), v) {
                (Some(serde_json::Value::Object(dst)), serde_json::Value::Object(src)) => {
                    dst.extend(src.clone())
                }
                _ => b.config[k] = v.clone(),
            }
        }
        let out = run(&b);
        assert_eq!(out.code(), 125, "{name}: {}", out.stderr_str());
        assert!(
            out.stderr_str().contains(name),
            "{name}: {}",
            out.stderr_str()
        );
        assert!(out.stdout.is_empty());
    }
}
