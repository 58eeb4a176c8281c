//! The one Sextant binary. `sextant server` (API server and controllers, issue 3 and
//! 5) and `sextant agent` (kubelet and dataplane, issues 4 and 6) are added here as
//! thin subcommands over the library crates; today it only reports its version.

use clap::Parser;

/// Command line of `sextant`.
#[derive(Debug, Parser)]
#[command(
    name = "sextant",
    version,
    about = "Kubernetes-compatible orchestrator with an eBPF dataplane"
)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!(
        "sextant {}: no subcommands yet; see README.md",
        env!("CARGO_PKG_VERSION")
    );
}
