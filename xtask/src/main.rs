//! Project automation, run as `cargo xtask <command>`:
//!
//! - `setup`: installs what the build and the tests need (Debian packages,
//!   bpf-linker, the `debian-bpf` toolchain link, bpffs); idempotent and quick.
//! - `build-ebpf`: builds the kernel-side programs alone.
//! - `images`: builds the offline OCI images into `target/images/`.
//! - `test`: setup, format and lint checks, images, then every test.
//! - `up`: setup and build, then reports which parts of the cluster exist.

mod ebpf;
mod images;
mod leaks;
mod setup;
mod step;
mod test;
mod up;

use clap::{Parser, Subcommand};

/// `cargo xtask` commands.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Sextant project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the system packages, bpf-linker and the eBPF toolchain link; mount bpffs.
    Setup,
    /// Build the eBPF programs (ebpf/programs) for bpfel-unknown-none.
    BuildEbpf,
    /// Build the offline OCI images (busybox, demo, pause) into target/images/.
    Images,
    /// Run setup, fmt, clippy and every test (unit and end-to-end).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`.
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// Set up the machine, build everything, and start what exists of the cluster.
    Up,
    /// Run a benchmark (release build) and record it in docs/benchmarks.md: `api`,
    /// `dataplane`, `pod-startup`, `scheduler`.
    Bench {
        /// Which benchmark.
        name: String,
    },
}

/// Builds the release binaries and runs `bench <name>` from the tests crate (which
/// has the harness; xtask itself stays buildable before `setup` installs protoc).
fn bench(name: &str) -> anyhow::Result<()> {
    setup::setup()?;
    images::build()?;
    step::step("build release binaries", || {
        step::run(step::cargo().args(["build", "--release", "-p", "sextant"]))
    })?;
    step::step(&format!("bench {name}"), || {
        step::run(step::cargo().args([
            "run",
            "--release",
            "-p",
            "sextant-tests",
            "--bin",
            "bench",
            "--",
            name,
        ]))
    })
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::setup(),
        Command::BuildEbpf => ebpf::build().map(|path| println!("eBPF object: {}", path.display())),
        Command::Images => images::build().map(|_| ()),
        Command::Test { cargo_test_args } => test::run_all(&cargo_test_args),
        Command::Up => up::run_up(),
        Command::Bench { name } => bench(&name),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
