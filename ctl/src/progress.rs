//! A progress line for long waits: on a terminal, stderr shows what the command
//! waits for and for how long, redrawn in place and erased when done. Nothing is
//! drawn when stderr is not a terminal, so scripts (and the comparison with
//! kubectl) see exactly kubectl's output.

use std::{
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;

/// The spinner's frames.
const FRAMES: [char; 4] = ['|', '/', '-', '\\'];

/// A progress line being drawn; dropping it erases the line.
#[derive(Debug)]
pub struct Progress {
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts drawing `what` with the time elapsed, if stderr is a terminal.
    pub fn start(what: String) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { task: None };
        }
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(150));
            for frame in FRAMES.iter().cycle() {
                tick.tick().await;
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r\x1b[K{frame} {what} ({}s)",
                    started.elapsed().as_secs()
                );
                let _ = err.flush();
            }
        });
        Self { task: Some(task) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}
