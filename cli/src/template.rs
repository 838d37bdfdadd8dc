//! `mu2 template build|list|rm`: the operator's view of the templates
//! (`mu2_microvm::template`) in the directory the configuration names.
//!
//! `build BUNDLE` builds the template of the VM that `mu2 run BUNDLE` (or
//! the shim, for a container of that config.json) would start — same
//! memory, vCPUs, shares, accelerator, QEMU and jail — so that its first
//! request is already a restore. `list` verifies each template as a
//! restore would (length and checksum) and prints one line per template;
//! `rm` removes them all.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use mu2_microvm::jail::config::ConfigError;
use mu2_microvm::record::{Owner, OwnerKind};
use mu2_microvm::template::{Key, Store, TemplateError, TemplateMode};
use mu2_microvm::{AccelChoice, GuestImage};
use mu2_oci::BundleError;

#[derive(Debug, thiserror::Error)]
pub enum TemplateCmdError {
    #[error("cannot read the mu2 configuration")]
    Config(#[from] ConfigError),
    #[error("templates are turned off (`[templates] enabled = false` or MU2_TEMPLATES=off)")]
    Off,
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Guest(#[from] mu2_microvm::guest::GuestImageError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("another process is building this template now")]
    Busy,
    #[error("cannot write the output")]
    Output(#[from] io::Error),
}

fn store() -> Result<Store, TemplateCmdError> {
    store_of(TemplateMode::load()?)
}

fn store_of(mode: TemplateMode) -> Result<Store, TemplateCmdError> {
    match mode {
        TemplateMode::Off => Err(TemplateCmdError::Off),
        TemplateMode::Use { dir, max_bytes, .. } => Ok(Store::open(&dir)?.with_budget(max_bytes)),
    }
}

/// `mu2 template build BUNDLE`.
pub fn build(
    bundle: &Path,
    guest_dir: Option<&Path>,
    accel: AccelChoice,
    qemu: PathBuf,
    out: &mut impl Write,
) -> Result<(), TemplateCmdError> {
    let config = mu2_microvm::config::HostConfig::load()?;
    let store = store_of(config.templates)?;
    let plan = mu2_oci::load(bundle)?;
    let image = GuestImage::locate(guest_dir)?;
    let spec = plan.vm_spec(
        format!("template-build-{}", std::process::id()),
        &image,
        qemu,
        accel.resolve(),
        config.jail,
        config.deadlines,
        Owner::this_process(OwnerKind::Run),
    );
    spec.validate().map_err(|e| TemplateError::Vm(e.into()))?;
    let key = Key::of(&spec)?;
    let t = match store.find(&key) {
        Ok(Some(t)) => {
            writeln!(out, "{} exists", key.as_str())?;
            describe(out, key.as_str(), &t.meta);
            return Ok(());
        }
        Ok(None) => store.build(&spec, &key)?.ok_or(TemplateCmdError::Busy)?,
        Err(e) => {
            writeln!(
                out,
                "{}: {}; rebuilding",
                key.as_str(),
                mu2_microvm::describe_error(&e)
            )?;
            store.discard(&key);
            store.build(&spec, &key)?.ok_or(TemplateCmdError::Busy)?
        }
    };
    writeln!(out, "{} built", key.as_str())?;
    describe(out, key.as_str(), &t.meta);
    Ok(())
}

fn describe(out: &mut impl Write, key: &str, m: &mu2_microvm::template::Meta) {
    let _ = writeln!(
        out,
        "{key}  {} MiB  {} vCPU  shares {}  state {} MiB  boot {} ms  save {} ms  agent {} kernel {}",
        m.memory_mib,
        m.vcpus,
        m.shares.join(","),
        m.state_bytes >> 20,
        m.boot_ms,
        m.save_ms,
        m.agent_version,
        m.kernel_release
    );
}

/// `mu2 template list`: one line per template; a broken one says why.
pub fn list(out: &mut impl Write) -> Result<(), TemplateCmdError> {
    let store = store()?;
    let all = store.list();
    writeln!(out, "{}: {} template(s)", store.dir().display(), all.len())?;
    for (key, r) in all {
        match r {
            Ok(m) => describe(out, &key, &m),
            Err(e) => writeln!(out, "{key}  unusable: {}", mu2_microvm::describe_error(&e))?,
        }
    }
    Ok(())
}

/// `mu2 template rm`: removes every template.
pub fn remove_all(out: &mut impl Write) -> Result<(), TemplateCmdError> {
    let store = store()?;
    for (key, _) in store.list() {
        store.discard(&Key::from_hex(&key).map_err(|why| TemplateError::Corrupt {
            key: key.clone(),
            why,
        })?);
        writeln!(out, "{key} removed")?;
    }
    Ok(())
}
