//! The jailer's plan as it arrives on `mu2-jailer`'s stdin: parsed and
//! validated (`Plan::parse`), never a panic. An accepted plan has only
//! plain absolute paths inside the jail.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use mu2_microvm::jail::Plan;

fn plain(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(plan) = Plan::parse(data) {
        assert!(!plan.argv.is_empty());
        assert!(plain(&plan.program));
        for b in &plan.binds {
            assert!(plain(&b.target), "{:?}", b.target);
            assert!(b.source.is_absolute());
        }
    }
});
