//! The seed inputs of the protocol's fuzz targets (fuzz/corpus/<target>/
//! seed-*) are real frames: this test checks that they still decode as the
//! messages they were made from, so a protocol change that makes them stale
//! fails here. `MU2_WRITE_FUZZ_SEEDS=1 cargo test -p mu2-protocol --test
//! fuzz_seeds` (re)writes them.

use std::path::{Path, PathBuf};

use mu2_protocol::*;

fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let frame = |m: &dyn Fn(&mut Vec<u8>)| {
        let mut w = Vec::new();
        m(&mut w);
        w
    };
    let ready = GuestMsg::Ready(Ready {
        protocol_version: PROTOCOL_VERSION,
        agent_version: "0.1.0".into(),
        kernel_release: "6.1.0-57-amd64".into(),
        uptime_ns: 812_000_000,
    });
    let exit = GuestMsg::Exit(Exit {
        status: 137,
        signal: Some(9),
        oom_killed: true,
        stdout_bytes: 6,
        stderr_bytes: 0,
    });
    let failed = GuestMsg::StartFailed {
        reason: StartFailReason::NotFound,
        message: "exec /bin/nope: no such file or directory".into(),
    };
    let run = HostMsg::Run(Box::new(Run {
        root: Root {
            share_tag: "rootfs".into(),
            readonly: false,
            share_subdir: None,
        },
        process: Process {
            args: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/bin".into(), "TERM=xterm".into()],
            cwd: "/".into(),
            user: User {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![50],
                umask: Some(0o022),
            },
            terminal: false,
            console_size: Some(ConsoleSize { rows: 24, cols: 80 }),
            rlimits: vec![Rlimit {
                resource: 7,
                soft: 1024,
                hard: 1024,
            }],
            no_new_privileges: true,
            ..Default::default()
        },
        hostname: "mu2".into(),
        mounts: vec![
            Mount {
                destination: "/data".into(),
                source: MountSource::Share("vol0".into()),
                options: vec![],
                readonly: true,
                share_file: None,
            },
            Mount {
                destination: "/tmp".into(),
                source: MountSource::Fs("tmpfs".into()),
                options: vec!["size=1m".into()],
                readonly: false,
                share_file: None,
            },
        ],
        memory_limit_bytes: Some(64 << 20),
        pids_limit: Some(100),
        ..Default::default()
    }));
    let signal = HostMsg::Signal {
        signal: 15,
        all: false,
    };
    let close = HostMsg::StdinClose { total_bytes: 6 };
    let g = |m: &GuestMsg| frame(&|w| write_msg(w, m).unwrap());
    let h = |m: &HostMsg| frame(&|w| write_msg(w, m).unwrap());
    let prepared = GuestMsg::Prepared {
        path: "/bin/sh".into(),
    };
    let updated = GuestMsg::Updated {
        error: Some("memory.max: busy".into()),
    };
    let update = HostMsg::Update(mu2_protocol::Update {
        memory_bytes: Some(mu2_protocol::Limit::Amount(64 << 20)),
        pids: Some(mu2_protocol::Limit::Unlimited),
    });
    let identity = HostMsg::Identity(
        Identity::new(
            (0u8..64).map(|b| b.wrapping_mul(37)).collect(),
            1_767_225_600_000_000_000,
            "t-run-1234-0".into(),
        )
        .unwrap(),
    );
    let identified = GuestMsg::Identified {
        uptime_ns: 815_000_000,
    };
    let session = [
        g(&ready),
        g(&identified),
        g(&prepared),
        g(&GuestMsg::Started { pid: 1 }),
        g(&exit),
    ]
    .concat();
    vec![
        ("frame", "seed-ready", g(&ready)),
        ("frame", "seed-session", session.clone()),
        ("guest_msg", "seed-ready", g(&ready)),
        ("guest_msg", "seed-exit", g(&exit)),
        ("guest_msg", "seed-start-failed", g(&failed)),
        ("guest_msg", "seed-updated", g(&updated)),
        ("guest_msg", "seed-identified", g(&identified)),
        ("guest_msg", "seed-session", session),
        ("host_msg", "seed-run", h(&run)),
        ("host_msg", "seed-signal", h(&signal)),
        ("host_msg", "seed-update", h(&update)),
        ("host_msg", "seed-identity", h(&identity)),
        (
            "host_msg",
            "seed-host-session",
            [
                h(&identity),
                h(&run),
                h(&HostMsg::Start),
                h(&close),
                h(&HostMsg::ExitAck),
            ]
            .concat(),
        ),
        (
            "host_msg",
            "seed-stdin-close",
            [h(&identity), h(&run), h(&close)].concat(),
        ),
    ]
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

#[test]
fn fuzz_seeds_are_current_frames() {
    let write = std::env::var_os("MU2_WRITE_FUZZ_SEEDS").is_some();
    for (target, name, bytes) in seeds() {
        let path = corpus().join(target).join(name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (MU2_WRITE_FUZZ_SEEDS=1)", path.display()));
        assert_eq!(
            on_disk,
            bytes,
            "{} is stale: rewrite it with MU2_WRITE_FUZZ_SEEDS=1",
            path.display()
        );
        let mut r = &on_disk[..];
        let mut n = 0;
        match target {
            "host_msg" => {
                while read_msg::<_, HostMsg>(&mut r).unwrap().is_some() {
                    n += 1
                }
            }
            _ => {
                while read_msg::<_, GuestMsg>(&mut r).unwrap().is_some() {
                    n += 1
                }
            }
        }
        assert!(n > 0, "{}", path.display());
    }
}
