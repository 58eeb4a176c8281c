//! `cargo xtask up`: sets up the machine, builds everything, and starts what exists
//! of the cluster. Today that is the build and the images; the API server (issue 3)
//! and the agent with the demo app (issue 4) are not built yet, and this says so.

use anyhow::Result;

use crate::step::{cargo, run, step};

/// Sets up, builds, and reports.
pub(crate) fn run_up() -> Result<()> {
    crate::setup::setup()?;
    step("build the workspace (with the eBPF programs)", || {
        run(cargo().arg("build"))
    })?;
    let images = crate::images::build()?;
    println!();
    println!("Sextant is built. What exists today:");
    println!("  built   eBPF build-and-load pipeline (dataplane: per-interface XDP/TC counters)");
    println!("  built   metrics crate: OpenMetrics /metrics and tracing setup");
    println!("  built   offline images in {}", images.display());
    println!("  missing API server (`sextant server`): issue 3");
    println!("  missing kubelet and agent (`sextant server --with-agent`): issue 4");
    println!();
    println!(
        "No cluster is started yet: there is no API server to start. Run `cargo xtask test` to"
    );
    println!("exercise what exists against real etcd, containerd and Prometheus.");
    Ok(())
}
