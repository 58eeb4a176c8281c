//! The `sextantctl` binary (the CLI lives in the `ctl` crate; it is built here
//! so the end-to-end tests have it beside `sextant`): parses the command line,
//! runs it, prints the error kubectl-style, and exits 1 on failure.

use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;
use sextant_ctl::{Cli, run};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    match run(cli, &mut out, &mut err).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
