//! The agent's request, checked on the host before any VM boots.
//!
//! A request the agent would refuse — one bigger than a protocol frame, or
//! one its decoder rejects (a NUL byte in an argument, an env entry without
//! `=`, more list entries than the protocol allows, a hostname over 64
//! bytes) — is found here by encoding it and running the agent's own
//! decoder on the bytes, so the two can never disagree. The error names the
//! config.json field: for a request that is too big, the field that takes
//! the most room.

use mu2_protocol::{HostMsg, Process, ProtocolError, Root, Run, Wire, MAX_FRAME_LEN};

use crate::error::{field, BundleError};

/// Checks that `run` fits in one frame and that the agent accepts it.
pub fn check_run(run: &Run) -> Result<(), BundleError> {
    let bytes = encode(run)?;
    let size = bytes.len();
    if size > MAX_FRAME_LEN {
        let (field, field_size) = biggest_field(run, size)?;
        return Err(BundleError::TooLarge {
            field: field.into(),
            field_size,
            size,
            max: MAX_FRAME_LEN,
        });
    }
    match HostMsg::decode(&bytes) {
        Ok(_) => Ok(()),
        Err(ProtocolError::Invalid { field: f, reason }) => Err(field(config_field(f), reason)),
        Err(e) => Err(field("request", mu2_microvm::describe_error(&e))),
    }
}

/// Checks one process (an exec's) as [`check_run`] checks a whole request.
pub(crate) fn check_process(process: &Process) -> Result<(), BundleError> {
    check_run(&Run {
        root: Root {
            share_tag: crate::ROOTFS_TAG.into(),
            readonly: false,
            share_subdir: None,
        },
        process: process.clone(),
        ..Default::default()
    })
}

fn encode(run: &Run) -> Result<Vec<u8>, BundleError> {
    HostMsg::Run(Box::new(run.clone()))
        .encode()
        .map_err(|e| field("request", mu2_microvm::describe_error(&e)))
}

fn encoded_len(run: &Run) -> Result<usize, BundleError> {
    encode(run).map(|b| b.len())
}

/// The config.json field whose entries take the most of the encoded
/// request, and how much: the request's size without it, subtracted.
fn biggest_field(run: &Run, size: usize) -> Result<(&'static str, usize), BundleError> {
    type Clear = fn(&mut Run);
    let fields: [(&str, Clear); 6] = [
        ("process.args", |r| r.process.args.clear()),
        ("process.env", |r| r.process.env.clear()),
        ("mounts", |r| r.mounts.clear()),
        ("process.rlimits", |r| r.process.rlimits.clear()),
        ("process.user.additionalGids", |r| {
            r.process.user.additional_gids.clear()
        }),
        ("hostname", |r| r.hostname.clear()),
    ];
    let mut best = ("process", 0);
    for (name, clear) in fields {
        let mut without = run.clone();
        clear(&mut without);
        let share = size - encoded_len(&without)?;
        if share > best.1 {
            best = (name, share);
        }
    }
    Ok(best)
}

/// The config.json name of a field the protocol names.
fn config_field(protocol: &str) -> String {
    let name = match protocol {
        "run.hostname" => "hostname".to_string(),
        "run.mounts" => "mounts".to_string(),
        "run.root" | "run.root.share_tag" => "root".to_string(),
        // A file bind mount's name travels apart from its directory.
        "mount.share_file" => "mounts[].source".to_string(),
        p if p.starts_with("mount.") => format!("mounts[].{}", &p["mount.".len()..]),
        p if p.starts_with("console_size") => "process.consoleSize".to_string(),
        p => p.to_string(),
    };
    // snake_case to the spec's camelCase.
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_fields_get_their_config_names() {
        assert_eq!(config_field("process.env"), "process.env");
        assert_eq!(
            config_field("process.user.additional_gids"),
            "process.user.additionalGids"
        );
        assert_eq!(config_field("run.hostname"), "hostname");
        assert_eq!(config_field("mount.share_file"), "mounts[].source");
        assert_eq!(config_field("mount.options"), "mounts[].options");
        assert_eq!(config_field("console_size.rows"), "process.consoleSize");
    }
}
