//! The pod sandbox process of `sextant.local/pause:v1`: it holds the pod's
//! namespaces open, reaps orphaned children (it is PID 1 when the pod shares its PID
//! namespace), and exits 0 on SIGTERM or SIGINT.

use nix::{
    sys::{
        signal::{SigSet, SigmaskHow, Signal, sigprocmask},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

fn main() {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(s);
    }
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        eprintln!("pause: blocking signals: {e}");
        std::process::exit(1);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(Signal::SIGTERM | Signal::SIGINT) => std::process::exit(0),
            Ok(_) => {}
            Err(e) => {
                eprintln!("pause: waiting for signals: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Reaps every exited child without blocking.
fn reap() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
