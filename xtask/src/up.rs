//! `cargo xtask up`: sets up the machine, builds everything, and runs what exists of
//! the cluster in the foreground: today the API server on the embedded store (the
//! agent with the demo app joins with issue 4). Ctrl-C stops it.

use anyhow::{Result, bail};

use crate::step::{cargo, run, step, target_dir};

/// Sets up, builds, and runs `sextant server` until interrupted.
pub(crate) fn run_up() -> Result<()> {
    crate::setup::setup()?;
    step("build the workspace (with the eBPF programs)", || {
        run(cargo().arg("build"))
    })?;
    let images = crate::images::build()?;
    let data_dir = target_dir().join("sextant-up");
    let kubeconfig = data_dir.join("admin.kubeconfig");
    println!();
    println!("What exists today:");
    println!(
        "  running API server (`sextant server`, embedded store in {})",
        data_dir.display()
    );
    println!("  built   offline images in {}", images.display());
    println!(
        "  missing kubelet and agent with the demo app (`sextant server --with-agent`): issue 4"
    );
    println!();
    println!("Reach the cluster with kubectl:");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get namespaces");
    println!("  kubectl apply -f your-manifest.yaml");
    println!(
        "Ctrl-C stops the server; its data stays in {} for the next `cargo xtask up`.",
        data_dir.display()
    );
    println!();
    let binary = target_dir().join("debug").join("sextant");
    let status = std::process::Command::new(&binary)
        .args(["server", "--data-dir"])
        .arg(&data_dir)
        .args(["--listen", "0.0.0.0:6443"])
        .status()?;
    if !status.success() {
        bail!("sextant server exited with {status}");
    }
    Ok(())
}
