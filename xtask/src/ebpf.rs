//! `cargo xtask build-ebpf`: builds `ebpf/programs` the way `dataplane/build.rs`
//! does (through aya-build), so a failure shows the same message.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::step::{cargo, run, target_dir};

/// Builds the dataplane crate (whose build script compiles and embeds the eBPF
/// object) and returns the path of the object.
pub(crate) fn build() -> Result<PathBuf> {
    run(cargo().args(["build", "--package", "sextant-dataplane"]))?;
    // aya-build copies the object into the dataplane build script's OUT_DIR.
    let build = target_dir().join("debug/build");
    let newest = std::fs::read_dir(&build)?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("sextant-dataplane-")
        })
        .map(|e| e.path().join("out/sextant-ebpf"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    match newest {
        Some(p) => Ok(p),
        None => bail!("the eBPF object was not found under {}", build.display()),
    }
}
