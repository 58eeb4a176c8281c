//! `sextantctl exec` and `attach`: a command in (or the main process of) a
//! running container, over the API server's WebSocket upgrade
//! (`v5.channel.k8s.io`, which can tell the container that stdin ended). With
//! `-t` on a terminal, the local terminal is put in raw mode for the session and
//! its size follows the window.

use std::io::{IsTerminal as _, Write};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt as _,
    api::{AttachParams, AttachedProcess, TerminalSize},
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

use crate::{Error, Result, session::Session, target};

/// What `exec` and `attach` share: the pod, the container, the streams.
#[derive(Clone, Debug, clap::Args)]
pub struct AttachArgs {
    /// The pod (`NAME`, `pod/NAME`) or a workload or Service (`deploy/NAME`: one of its pods).
    pub target: String,
    /// The container (default: the pod's default container, else its first).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Pass stdin to the container.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Stdin is a TTY: raw terminal, window size followed.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Print nothing but the container's output.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// The arguments of `exec`.
#[derive(Clone, Debug, clap::Args)]
pub struct ExecArgs {
    /// The pod, container and streams.
    #[command(flatten)]
    pub on: AttachArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Puts the terminal in raw mode and back when dropped.
struct RawMode;

impl RawMode {
    fn enter() -> Result<Self> {
        crossterm::terminal::enable_raw_mode().map_err(|source| Error::Io {
            what: "putting the terminal in raw mode".into(),
            source,
        })?;
        Ok(Self)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// What one session asks for.
struct Streams {
    stdin: bool,
    tty: bool,
    quiet: bool,
}

impl Streams {
    fn params(&self, container: String) -> AttachParams {
        AttachParams {
            container: Some(container),
            stdin: self.stdin,
            stdout: true,
            // With a TTY the terminal carries both; kubectl asks for no stderr.
            stderr: !self.tty,
            tty: self.tty,
            ..AttachParams::default()
        }
    }
}

/// Runs `exec`.
pub async fn exec(
    session: &Session,
    args: &ExecArgs,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Result<()> {
    let on = &args.on;
    let pod = target::pod(session, &on.target, None).await?;
    let container = target::container(&pod, on.container.as_deref());
    let api: Api<Pod> = Api::namespaced(session.client.clone(), &session.namespace);
    let streams = Streams {
        stdin: on.stdin,
        tty: on.tty,
        quiet: on.quiet,
    };
    let process = api
        .exec(
            &pod.name_any(),
            args.command.clone(),
            &streams.params(container),
        )
        .await
        .map_err(|e| Error::from_kube(e, &session.server))?;
    relay(process, &streams, out, err).await
}

/// Runs `attach`.
pub async fn attach(
    session: &Session,
    args: &AttachArgs,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Result<()> {
    let pod = target::pod(session, &args.target, None).await?;
    let container = target::container(&pod, args.container.as_deref());
    let api: Api<Pod> = Api::namespaced(session.client.clone(), &session.namespace);
    let streams = Streams {
        stdin: args.stdin,
        tty: args.tty,
        quiet: args.quiet,
    };
    if !args.quiet {
        let hint = if args.stdin && args.tty {
            "If you don't see a command prompt, try pressing enter."
        } else {
            ""
        };
        let _ = writeln!(
            err,
            "All commands and output from this session will be recorded in container logs, including credentials and sensitive information passed through the command prompt.\n{hint}"
        );
    }
    let process = api
        .attach(&pod.name_any(), &streams.params(container))
        .await
        .map_err(|e| Error::from_kube(e, &session.server))?;
    relay(process, &streams, out, err).await
}

/// Reads `from` to its end, writing each piece to `to` as it comes.
async fn copy_out(
    mut from: impl AsyncRead + Unpin,
    to: &mut (dyn Write + Send),
    what: &str,
) -> Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = from.read(&mut buf).await.map_err(|source| Error::Io {
            what: format!("reading the container's {what}"),
            source,
        })?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])
            .and_then(|()| to.flush())
            .map_err(|source| Error::Io {
                what: format!("writing the container's {what}"),
                source,
            })?;
    }
}

/// Connects the local terminal or pipes to a started process until it ends,
/// then turns its exit status into kubectl's: exit code N for a command that
/// exited N.
async fn relay(
    mut process: AttachedProcess,
    streams: &Streams,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Result<()> {
    let terminal = streams.tty && std::io::stdin().is_terminal();
    if streams.tty && !terminal && !streams.quiet {
        let _ = writeln!(
            err,
            "Unable to use a TTY - input is not a terminal or the right kind of file"
        );
    }
    let raw = if terminal {
        Some(RawMode::enter()?)
    } else {
        None
    };
    if terminal && let Some(mut sizes) = process.terminal_size() {
        // The first size now, then one per window change.
        tokio::spawn(async move {
            use futures::SinkExt as _;
            let Ok(mut changes) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            loop {
                if let Ok((width, height)) = crossterm::terminal::size()
                    && sizes.send(TerminalSize { width, height }).await.is_err()
                {
                    return;
                }
                if changes.recv().await.is_none() {
                    return;
                }
            }
        });
    }
    if streams.stdin
        && let Some(mut to_container) = process.stdin()
    {
        // Stdin is read on its own task: a blocking read must not hold up the
        // output, and the process may end before stdin does.
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 8 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to_container.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        let _ = to_container.flush().await;
                    }
                }
            }
            // End of input: v5 tells the container its stdin closed.
            let _ = to_container.shutdown().await;
        });
    }
    let status = process.take_status();
    let stdout = process.stdout();
    let stderr = process.stderr();
    let outputs = async {
        if let Some(s) = stdout {
            copy_out(s, out, "stdout").await?;
        }
        Ok::<_, Error>(())
    };
    let errors = async {
        if let Some(s) = stderr {
            copy_out(s, err, "stderr").await?;
        }
        Ok::<_, Error>(())
    };
    let (o, e) = tokio::join!(outputs, errors);
    drop(raw);
    o?;
    e?;
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    let _ = process.join().await;
    match status {
        Some(s) if s.status.as_deref() == Some("Failure") => {
            let code = s
                .details
                .as_ref()
                .and_then(|d| d.causes.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
                .and_then(|c| c.message.as_deref())
                .and_then(|m| m.parse::<u8>().ok());
            match code {
                Some(code) => Err(Error::Exited(code)),
                None => Err(Error::Client(s.message.unwrap_or_default())),
            }
        }
        _ => Ok(()),
    }
}
