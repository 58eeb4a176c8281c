//! The `sextantctl` binary (the CLI lives in the `ctl` crate; it is built here
//! so the end-to-end tests have it beside `sextant`): parses the command line,
//! runs it, prints what it wrote and the error kubectl-style, and exits 1 on
//! failure.

use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;
use sextant_ctl::{Cli, run};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (outcome, error) = run(cli).await;
    // A closed pipe (`| head`) is not worth a panic.
    let _ = std::io::stdout().write_all(outcome.stdout.as_bytes());
    let _ = std::io::stderr().write_all(outcome.stderr.as_bytes());
    match error {
        None => ExitCode::SUCCESS,
        Some(e) => {
            let _ = writeln!(std::io::stderr(), "{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
