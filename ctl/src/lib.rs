//! `sextantctl`: the cluster's own CLI. It speaks the same API as kubectl, reads
//! the same kubeconfig (`--kubeconfig`, `KUBECONFIG`, `~/.kube/config`,
//! `--context`, `-n`), prints what the server prints (Tables), and will add what
//! only Sextant can show: flows and the eBPF dataplane's state (issue 8).
//!
//! Commands: `config` (current-context, use-context, set-context,
//! get-contexts), `get` (server-side Tables, `-o wide|json|yaml|name|jsonpath=
//! |custom-columns=`, `-A`, `-l`), `describe` (kubectl's layout for Pods,
//! Deployments, Services, ConfigMaps, ServiceAccounts, Namespaces and Nodes, its
//! generic describer for the rest), `apply -f`/`create -f` (files, directories,
//! `-R`, stdin, multi-document YAML), `delete`, `edit`, `patch`, `label`,
//! `annotate`, `scale`, `rollout status|history|undo|pause|resume|restart`,
//! `logs` (`-f`, `-l`, `--prefix`, `--since`, `--tail`, `-c`, `--previous`),
//! `exec` and `attach` (`-it`: raw terminal, window size followed),
//! `port-forward`, `top pods|nodes`, `wait --for`, and what only Sextant shows:
//! `flows` (every node's flows, `--follow`, filters), `dataplane
//! services|endpoints|policies|ct` (each node's eBPF maps), `cluster status`,
//! `debug pod`; `completion bash|zsh|fish`. Errors are kubectl's: the server's
//! Status reason and message, exit code 1 (`exec`: the command's exit code).

pub mod apply;
pub mod cluster;
pub mod dataplane;
pub mod describe;
pub mod discovery;
pub mod error;
pub mod exec;
pub mod flows;
pub mod get;
pub mod jsonpath;
pub mod kubeconfig;
pub mod logs;
pub mod output;
pub mod patch;
pub mod portforward;
pub mod progress;
pub mod rollout;
pub mod session;
pub mod target;
pub mod top;
pub mod wait;

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
    /// Show an object in detail, with its events (kubectl's layout).
    Describe {
        /// TYPE [NAME...] or TYPE/NAME...
        #[arg(required = true)]
        args: Vec<String>,
        /// With TYPE alone: only objects matching this label selector.
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// CPU and memory of pods or nodes (the Metrics API).
    #[command(subcommand)]
    Top(top::TopCommand),
    /// Create or update objects from files, directories or stdin (client-side
    /// apply, kubectl's last-applied annotation).
    Apply(apply::Files),
    /// Create objects from files, directories or stdin.
    Create(apply::Files),
    /// Delete objects by TYPE NAME..., TYPE/NAME... or -f.
    Delete {
        /// TYPE NAME... or TYPE/NAME...
        args: Vec<String>,
        /// Manifests naming the objects to delete.
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
    },
    /// Add (k=v), change (with --overwrite) or remove (k-) labels.
    Label {
        /// TYPE NAME... then the changes.
        #[arg(required = true)]
        args: Vec<String>,
        /// Allow changing an existing label.
        #[arg(long)]
        overwrite: bool,
    },
    /// Add (k=v), change (with --overwrite) or remove (k-) annotations.
    Annotate {
        /// TYPE NAME... then the changes.
        #[arg(required = true)]
        args: Vec<String>,
        /// Allow changing an existing annotation.
        #[arg(long)]
        overwrite: bool,
    },
    /// Manage rollouts.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Wait until objects meet a condition (--for=condition=Ready) or are deleted (--for=delete).
    Wait {
        /// TYPE/NAME... or TYPE NAME...
        #[arg(required = true)]
        args: Vec<String>,
        /// `condition=NAME[=VALUE]` or `delete`.
        #[arg(long = "for", required = true)]
        condition: String,
        /// How long to wait (default 30s).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Print a pod's container log (-f follows; -l reads every matching pod).
    Logs(logs::LogsArgs),
    /// Set the replicas of a Deployment, ReplicaSet or StatefulSet.
    Scale {
        /// TYPE NAME or TYPE/NAME.
        #[arg(required = true)]
        args: Vec<String>,
        /// The new replica count.
        #[arg(long, required = true)]
        replicas: i32,
    },
    /// Run a command in a container (`exec POD -- CMD ARGS...`; -it for a terminal).
    Exec(exec::ExecArgs),
    /// Attach to a container's main process (its output; -i its stdin).
    Attach(exec::AttachArgs),
    /// Forward local ports to a pod's ports (`8080:80`, `80`, `:80`).
    PortForward(portforward::PortForwardArgs),
    /// Change an object with a strategic merge, JSON merge or JSON patch.
    Patch(patch::PatchArgs),
    /// Edit an object in $KUBE_EDITOR or $EDITOR and write it back.
    Edit {
        /// TYPE NAME or TYPE/NAME.
        #[arg(required = true)]
        args: Vec<String>,
    },
    /// Read and edit the kubeconfig.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the dataplane's flows (every node's, or --node's): verdict, drop
    /// reason, Service and NetworkPolicy; --follow keeps printing.
    Flows(flows::FlowsArgs),
    /// Show what a node's eBPF maps hold: services, endpoints or policies.
    Dataplane(dataplane::DataplaneArgs),
    /// The cluster at a glance: API server and datastore health, controller
    /// and scheduler leaders, each node's readiness and eBPF programs.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Troubleshooting views.
    #[command(subcommand)]
    Debug(DebugCommand),
    /// Print a shell completion script (bash, zsh or fish).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `rollout` subcommands.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Follow a Deployment's rollout until it is done, a line per change.
    Status {
        /// TYPE/NAME or TYPE NAME.
        #[arg(required = true)]
        args: Vec<String>,
        /// Give up after this long (`90s`, `5m`).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// List a Deployment's revisions, or show one (--revision).
    History {
        /// TYPE/NAME or TYPE NAME.
        #[arg(required = true)]
        args: Vec<String>,
        /// Show this revision's pod template.
        #[arg(long)]
        revision: Option<i64>,
    },
    /// Roll a Deployment back to its previous revision (or --to-revision).
    Undo {
        /// TYPE/NAME or TYPE NAME.
        #[arg(required = true)]
        args: Vec<String>,
        /// The revision to go back to (0: the previous).
        #[arg(long)]
        to_revision: Option<i64>,
    },
    /// Stop a Deployment's rollout where it is.
    Pause {
        /// TYPE/NAME or TYPE NAME.
        #[arg(required = true)]
        args: Vec<String>,
    },
    /// Let a paused Deployment roll out again.
    Resume {
        /// TYPE/NAME or TYPE NAME.
        #[arg(required = true)]
        args: Vec<String>,
    },
    /// Replace every pod of a Deployment, DaemonSet or StatefulSet.
    Restart {
        /// TYPE/NAME or TYPE NAME.
        #[arg(required = true)]
        args: Vec<String>,
    },
}

/// `cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Components and versions, datastore health, nodes and their dataplane.
    Status,
}

/// `debug` subcommands.
#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// A pod on one screen: state, probes, events, last log lines, recent flows.
    Pod {
        /// The pod (`NAME`, `pod/NAME`, `deploy/NAME`).
        name: String,
        /// How many events, log lines and flows.
        #[arg(long, default_value_t = 10)]
        lines: usize,
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

/// Runs the command `cli` asks for, writing its answer to `out` (as it comes,
/// for `flows --follow`) and notes to `err`. A command that printed part of its
/// answer before failing returns the error after that part.
pub async fn run(
    cli: Cli,
    out: &mut (dyn std::io::Write + Send),
    err: &mut (dyn std::io::Write + Send),
) -> Result<()> {
    let source = kubeconfig::Source {
        path: cli.kubeconfig.clone(),
        context: cli.context.clone(),
        namespace: cli.namespace.clone(),
    };
    let text = match cli.command {
        Command::Completion { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "sextantctl", &mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        }
        Command::Config(c) => match c {
            ConfigCommand::CurrentContext => kubeconfig::current_context(&source)? + "\n",
            ConfigCommand::UseContext { name } => kubeconfig::use_context(&source, &name)? + "\n",
            ConfigCommand::SetContext {
                name,
                cluster,
                user,
            } => {
                kubeconfig::set_context(
                    &source,
                    name.as_deref(),
                    cli.namespace.as_deref(),
                    cluster.as_deref(),
                    user.as_deref(),
                )? + "\n"
            }
            ConfigCommand::GetContexts => kubeconfig::get_contexts(&source)?,
        },
        Command::Get(args) => {
            let session = source.connect().await?;
            return finish(get::run(&session, &args).await?, out, err);
        }
        Command::Apply(files) => {
            let objects = apply::read_objects(&files, &mut std::io::stdin())?;
            return finish(
                apply::apply(&source.connect().await?, &objects).await?,
                out,
                err,
            );
        }
        Command::Create(files) => {
            let objects = apply::read_objects(&files, &mut std::io::stdin())?;
            return finish(
                apply::create(&source.connect().await?, &objects).await?,
                out,
                err,
            );
        }
        Command::Delete { args, files } => {
            let session = source.connect().await?;
            let targets = if files.is_empty() {
                apply::targets(&args)?
            } else {
                let files = apply::Files {
                    files,
                    recursive: false,
                };
                apply::read_objects(&files, &mut std::io::stdin())?
                    .iter()
                    .map(|m| {
                        (
                            m.object["kind"].as_str().unwrap_or_default().to_lowercase(),
                            m.object["metadata"]["name"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                        )
                    })
                    .collect()
            };
            return finish(apply::delete(&session, &targets).await?, out, err);
        }
        Command::Label { args, overwrite } => {
            let session = source.connect().await?;
            apply::set_meta(&session, apply::MetaMap::Labels, &args, overwrite).await?
        }
        Command::Annotate { args, overwrite } => {
            let session = source.connect().await?;
            apply::set_meta(&session, apply::MetaMap::Annotations, &args, overwrite).await?
        }
        Command::Scale { args, replicas } => {
            apply::scale(&source.connect().await?, &args, replicas).await?
        }
        Command::Rollout(r) => {
            let session = source.connect().await?;
            match r {
                RolloutCommand::Status { args, timeout } => {
                    return wait::rollout_status(&session, &args, timeout.as_deref(), out).await;
                }
                RolloutCommand::History { args, revision } => {
                    rollout::history_of(&session, &args, revision).await?
                }
                RolloutCommand::Undo { args, to_revision } => {
                    rollout::undo(&session, &args, to_revision).await?
                }
                RolloutCommand::Pause { args } => {
                    rollout::set_paused(&session, &args, true).await?
                }
                RolloutCommand::Resume { args } => {
                    rollout::set_paused(&session, &args, false).await?
                }
                RolloutCommand::Restart { args } => rollout::restart(&session, &args).await?,
            }
        }
        Command::Exec(args) => {
            let session = source.connect().await?;
            return exec::exec(&session, &args, out, err).await;
        }
        Command::Attach(args) => {
            let session = source.connect().await?;
            return exec::attach(&session, &args, out, err).await;
        }
        Command::PortForward(args) => {
            let session = source.connect().await?;
            return portforward::run(&session, &args, out, err).await;
        }
        Command::Describe { args, selector } => {
            describe::describe(&source.connect().await?, &args, selector.as_deref(), err).await?
        }
        Command::Top(t) => top::run(&source.connect().await?, &t).await?,
        Command::Cluster(ClusterCommand::Status) => {
            cluster::status(&source.connect().await?).await?
        }
        Command::Debug(DebugCommand::Pod { name, lines }) => {
            cluster::debug_pod(&source.connect().await?, &name, lines).await?
        }
        Command::Patch(args) => patch::patch(&source.connect().await?, &args).await?,
        Command::Edit { args } => patch::edit(&source.connect().await?, &args, err).await?,
        Command::Wait {
            args,
            condition,
            timeout,
        } => {
            let session = source.connect().await?;
            wait::wait(&session, &args, &condition, timeout.as_deref()).await?
        }
        Command::Logs(args) => {
            let session = source.connect().await?;
            return logs::run(&session, &args, out, err).await;
        }
        Command::Flows(args) => {
            let session = source.connect().await?;
            // Flows of every namespace unless -n says one.
            return flows::run_flows(&session, cli.namespace.as_deref(), &args, out).await;
        }
        Command::Dataplane(args) => {
            let session = source.connect().await?;
            dataplane::run(&session, &args).await?
        }
    };
    write(out, &text)
}

/// Prints what a command printed, then its failures in order; the last one is
/// the command's error (exit code 1).
fn finish(
    printed: output::Printed,
    out: &mut (dyn std::io::Write + Send),
    err: &mut (dyn std::io::Write + Send),
) -> Result<()> {
    write(out, &printed.stdout)?;
    write(err, &printed.stderr)?;
    let mut errors = printed.errors;
    let last = errors.pop();
    for e in errors {
        write(err, &format!("{e}\n"))?;
    }
    last.map_or(Ok(()), Err)
}

fn write(to: &mut (dyn std::io::Write + Send), text: &str) -> Result<()> {
    to.write_all(text.as_bytes())
        .and_then(|()| to.flush())
        .map_err(|source| Error::Io {
            what: "writing the output".into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        // clap's own checks: no two arguments share a flag, every id resolves.
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_says_what_it_does() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let here = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(here.clone());
                }
                walk(sub, &here, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "sextantctl", &mut missing);
        assert!(missing.is_empty(), "commands without help: {missing:?}");
    }
}
