//! `mu2 ps` and `mu2 gc`: the host's VMs as their ownership records tell
//! them (`mu2_microvm::record`), and the collection of what owners that
//! died left behind.
//!
//! `ps` only reads: a record's state comes from whether its owner and its
//! VMM still run (pid and start time). `gc` takes apart every abandoned
//! record — it kills the VMM if it still runs, then removes the cgroups,
//! the jail directory, the uid claim and the record — and prints one line
//! per VM; a record that must stay says why. Both read the record
//! directory from the configuration (`[vms] record_dir`).

use std::io::{self, Write};
use std::time::Duration;

use mu2_microvm::jail::config::ConfigError;
use mu2_microvm::jail::JailMode;
use mu2_microvm::record::{Filter, GcOptions, RecordDir, RecordInfo, GC_WAIT};

#[derive(Debug, thiserror::Error)]
pub enum VmsError {
    #[error("cannot read the mu2 configuration")]
    Config(#[from] ConfigError),
    #[error("cannot write the output")]
    Output(#[from] io::Error),
}

fn records() -> Result<RecordDir, VmsError> {
    Ok(RecordDir::for_mode(&JailMode::load()?))
}

/// `mu2 ps`: one line per VM record.
pub fn ps(out: &mut impl Write) -> Result<(), VmsError> {
    let rows: Vec<[String; 7]> = records()?.list().iter().map(row).collect();
    let header = ["VM", "OWNER", "CONTAINER", "EXEC", "VMM", "STATE", "AGE"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

fn row(info: &RecordInfo) -> [String; 7] {
    let dash = || "-".to_string();
    match &info.record {
        Err(why) => [
            info.id.clone(),
            "?".into(),
            "?".into(),
            "?".into(),
            "?".into(),
            format!("unreadable: {why}"),
            "?".into(),
        ],
        Ok(r) => [
            r.id.clone(),
            format!("{} {}", r.owner.kind, r.owner.pid),
            r.owner.container_name().unwrap_or_else(dash),
            r.owner.exec.clone().unwrap_or_else(dash),
            r.vmm
                .as_ref()
                .map(|v| v.qemu.pid.to_string())
                .unwrap_or_else(dash),
            r.state().to_string(),
            age(r.age()),
        ],
    }
}

/// `12s`, `5m3s`, `2h1m`, `3d4h`.
fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// `mu2 gc [--dry-run]`: collects the abandoned records, one line each.
pub fn gc(dry_run: bool, out: &mut impl Write) -> Result<(), VmsError> {
    let opts = GcOptions {
        wait: GC_WAIT,
        dry_run,
    };
    let report = records()?.collect(&Filter::Abandoned, &opts);
    if !dry_run {
        // Opening the template store removes what builders that died left.
        if let Ok(mu2_microvm::template::TemplateMode::Use { dir, .. }) =
            mu2_microvm::template::TemplateMode::load()
        {
            let _ = mu2_microvm::template::Store::open(&dir);
        }
    }
    if report.entries.is_empty() {
        writeln!(out, "nothing to collect")?;
    }
    for e in &report.entries {
        writeln!(out, "{}", e.summary())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(Duration::from_secs(7)), "7s");
        assert_eq!(age(Duration::from_secs(303)), "5m3s");
        assert_eq!(age(Duration::from_secs(7260)), "2h1m");
        assert_eq!(age(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d4h");
    }
}
