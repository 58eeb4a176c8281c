//! The `sextantctl` binary (the CLI lives in the `ctl` crate; it is built here
//! so the end-to-end tests have it beside `sextant`): parses the command line,
//! runs it, prints the error kubectl-style, and exits 1 on failure (`exec`:
//! the command's exit code).

use std::io::Write as _;

use clap::Parser as _;
use sextant_ctl::{Cli, run};

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let code = match rt.block_on(run(cli, &mut out, &mut err)) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            i32::from(e.exit_code())
        }
    };
    let _ = out.flush();
    // Exit with the runtime still alive: dropping it would wait for a read of
    // the terminal blocked in `exec -i`/`attach -i` until a key is pressed.
    std::process::exit(code);
}
