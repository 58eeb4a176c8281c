//! A real terminal for CLI tests: a tmux session on a server of its own (a
//! unique socket, so runs sharing a machine never meet), with keys sent to it
//! and the screen read back. The server goes when the [`Terminal`] is dropped.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use crate::{Error, Result, io_err, require_command, unique_name};

/// One tmux session running one shell command.
#[derive(Debug)]
pub struct Terminal {
    tmux: PathBuf,
    socket: String,
}

impl Terminal {
    /// Starts `command` (run by `sh -c`) in a `cols`×`rows` terminal.
    pub fn start(command: &str, cols: u16, rows: u16) -> Result<Self> {
        let term = Self {
            tmux: require_command("tmux")?,
            socket: unique_name("sextant-tty-"),
        };
        term.run(&[
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            command,
        ])?;
        // Keep the pane (and its last screen) after the command exits.
        term.run(&["set-option", "-t", "main", "remain-on-exit", "on"])?;
        Ok(term)
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.tmux)
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .map_err(io_err(format!("running tmux {args:?}")))?;
        if !out.status.success() {
            return Err(Error::Failed(format!(
                "tmux {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Types `text` and presses Enter.
    pub fn type_line(&self, text: &str) -> Result<()> {
        self.run(&["send-keys", "-t", "main", "-l", text])?;
        self.run(&["send-keys", "-t", "main", "Enter"]).map(|_| ())
    }

    /// Resizes the terminal (the program gets SIGWINCH).
    pub fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        self.run(&[
            "resize-window",
            "-t",
            "main",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
        ])
        .map(|_| ())
    }

    /// The screen and its scrollback, as text.
    pub fn screen(&self) -> Result<String> {
        self.run(&["capture-pane", "-p", "-t", "main", "-S", "-200"])
    }

    /// Waits until the screen shows `text`; the error carries the screen.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            let screen = self.screen()?;
            if screen.contains(text) {
                return Ok(screen);
            }
            if start.elapsed() > timeout {
                return Err(Error::Failed(format!(
                    "the terminal did not show {text:?} within {timeout:?}; it shows:\n{screen}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}
