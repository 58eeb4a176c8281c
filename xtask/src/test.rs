//! `cargo xtask test`: the whole check CI runs — setup, format, lints, images, the
//! missing-toolchain message, then every unit and end-to-end test.

use std::time::Instant;

use anyhow::{Result, bail};

use crate::step::{cargo, human, in_ci, run, step, target_dir};

/// Runs every check in order and stops at the first failure.
pub(crate) fn run_all(cargo_test_args: &[String]) -> Result<()> {
    let start = Instant::now();
    if in_ci() {
        println!("CI=true: a missing prerequisite fails the run; nothing is skipped");
    }
    crate::setup::setup()?;
    step("cargo fmt --check", || {
        run(cargo().args(["fmt", "--all", "--check"]))
    })?;
    step("cargo clippy --all-targets -D warnings", || {
        // Default members only: ebpf/programs cannot build for the host.
        run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))
    })?;
    crate::images::build()?;
    step(
        "build without the eBPF toolchain names `cargo xtask setup`",
        missing_toolchain_message,
    )?;
    let before = crate::leaks::Snapshot::take();
    step("cargo test (unit and end-to-end)", || {
        let mut cmd = cargo();
        cmd.args(["test", "--no-fail-fast"]);
        if !cargo_test_args.is_empty() {
            cmd.arg("--").args(cargo_test_args);
        }
        run(&mut cmd)
    })?;
    step("nothing left behind by the tests", || {
        before.check_nothing_new(&crate::leaks::Snapshot::take())
    })?;
    println!("all checks passed in {}", human(start.elapsed()));
    Ok(())
}

/// Pretends the `debian-bpf` toolchain is missing and checks that the build fails
/// with a message naming `cargo xtask setup`. A separate target dir keeps the real
/// build's eBPF object untouched.
fn missing_toolchain_message() -> Result<()> {
    let out = cargo()
        .args(["check", "--package", "sextant-dataplane"])
        .env("CARGO_TARGET_DIR", target_dir().join("toolchain-check"))
        .env("SEXTANT_BPF_TOOLCHAIN", "sextant-missing-toolchain")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        bail!("the build succeeded although the eBPF toolchain was missing");
    }
    if !stderr.contains("cargo xtask setup") {
        bail!("the build failed without naming `cargo xtask setup`:\n{stderr}");
    }
    let line = stderr
        .lines()
        .find(|l| l.contains("cargo xtask setup"))
        .unwrap_or_default();
    println!("    the build failed as expected: {}", line.trim());
    Ok(())
}
