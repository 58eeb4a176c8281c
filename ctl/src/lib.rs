//! `sextantctl`: the cluster's own CLI. It speaks the same API as kubectl, reads
//! the same kubeconfig (`--kubeconfig`, `KUBECONFIG`, `~/.kube/config`,
//! `--context`, `-n`), prints what the server prints (Tables), and will add what
//! only Sextant can show: flows and the eBPF dataplane's state (issue 8).
//!
//! Built so far: `config` (current-context, use-context, set-context,
//! get-contexts), `get` (server-side Tables, `-o wide|json|yaml|name`, `-A`,
//! `-l`), `completion bash|zsh|fish`. Errors are kubectl's: the server's Status
//! reason and message, exit code 1.

pub mod discovery;
pub mod error;
pub mod get;
pub mod kubeconfig;
pub mod output;

use clap::{CommandFactory, Parser, Subcommand};

pub use error::{Error, Result};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "sextantctl",
    version,
    about = "Run and inspect a Sextant cluster: kubectl's everyday commands, plus flows and the eBPF dataplane"
)]
pub struct Cli {
    /// Path to the kubeconfig file (default: KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (default: the context's, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Display one or many resources (the server's table, or -o json|yaml|name|wide).
    Get(get::GetArgs),
    /// Read and edit the kubeconfig.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (bash, zsh or fish).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the current context.
    CurrentContext,
    /// Make NAME the current context.
    UseContext {
        /// The context.
        name: String,
    },
    /// Create or edit a context (the current one when NAME is not given); the
    /// global --namespace sets its namespace, as with kubectl.
    SetContext {
        /// The context.
        name: Option<String>,
        /// Its cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Its user.
        #[arg(long)]
        user: Option<String>,
    },
    /// List the contexts.
    GetContexts,
}

/// What a command wrote: standard output and standard error.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Outcome {
    fn out(text: String) -> Self {
        Self {
            stdout: text,
            stderr: String::new(),
        }
    }
}

/// Runs the command `cli` asks for. A command that printed part of its answer
/// before failing returns that part with the error.
pub async fn run(cli: Cli) -> (Outcome, Option<Error>) {
    let source = kubeconfig::Source {
        path: cli.kubeconfig.clone(),
        context: cli.context.clone(),
        namespace: cli.namespace.clone(),
    };
    let line = |r: Result<String>| match r {
        Ok(s) => (Outcome::out(s + "\n"), None),
        Err(e) => (Outcome::default(), Some(e)),
    };
    match cli.command {
        Command::Completion { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "sextantctl", &mut buf);
            (
                Outcome::out(String::from_utf8_lossy(&buf).into_owned()),
                None,
            )
        }
        Command::Config(c) => match c {
            ConfigCommand::CurrentContext => line(kubeconfig::current_context(&source)),
            ConfigCommand::UseContext { name } => line(kubeconfig::use_context(&source, &name)),
            ConfigCommand::SetContext {
                name,
                cluster,
                user,
            } => line(kubeconfig::set_context(
                &source,
                name.as_deref(),
                cli.namespace.as_deref(),
                cluster.as_deref(),
                user.as_deref(),
            )),
            ConfigCommand::GetContexts => match kubeconfig::get_contexts(&source) {
                Ok(s) => (Outcome::out(s), None),
                Err(e) => (Outcome::default(), Some(e)),
            },
        },
        Command::Get(args) => {
            let session = match source.connect().await {
                Ok(s) => s,
                Err(e) => return (Outcome::default(), Some(e)),
            };
            match get::run(&session, &args).await {
                Ok(p) => (
                    Outcome {
                        stdout: p.stdout,
                        stderr: p.stderr,
                    },
                    p.error,
                ),
                Err(e) => (Outcome::default(), Some(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        // clap's own checks: no two arguments share a flag, every id resolves.
        Cli::command().debug_assert();
    }
}
