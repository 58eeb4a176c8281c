//! The one error type of `sextantctl`, printed the way kubectl prints its own:
//! the server's Status message with its reason, never a stack trace.

/// What can go wrong in a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a Status (401, 403, 404, 409, 422, ...).
    #[error("Error from server ({reason}): {message}")]
    Server {
        /// The Status reason (`NotFound`, `AlreadyExists`, `Invalid`, ...).
        reason: String,
        /// The Status message.
        message: String,
        /// The HTTP code.
        code: u16,
    },
    /// The server could not be reached.
    #[error(
        "The connection to the server {server} was refused - did you specify the right host or port? ({detail})"
    )]
    Unreachable {
        /// The server URL from the kubeconfig.
        server: String,
        /// What the transport said.
        detail: String,
    },
    /// The kubeconfig is missing, unreadable or names no usable context.
    #[error("error loading kubeconfig: {0}")]
    Kubeconfig(String),
    /// The command line names something that does not exist or makes no sense.
    #[error("error: {0}")]
    Usage(String),
    /// Anything else the client library reported.
    #[error("error: {0}")]
    Client(String),
    /// The command run by `exec` exited with this code (kubectl's message; the
    /// CLI exits with the same code).
    #[error("command terminated with exit code {0}")]
    Exited(u8),
    /// Local I/O (reading a file, writing the kubeconfig).
    #[error("error: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// From a kube-rs error, with the server's Status when there is one and the
    /// kubeconfig's server URL for transport failures.
    pub fn from_kube(e: kube::Error, server: &str) -> Self {
        match e {
            kube::Error::Api(status) => Self::Server {
                reason: if status.reason.is_empty() {
                    "Unknown".into()
                } else {
                    status.reason.clone()
                },
                message: status.message.clone(),
                code: status.code,
            },
            kube::Error::HyperError(_) | kube::Error::Service(_) => Self::Unreachable {
                server: server.to_owned(),
                detail: e.to_string(),
            },
            other => Self::Client(other.to_string()),
        }
    }

    /// The process exit code: kubectl's 1, or the exit code of `exec`'s command.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Exited(code) => *code,
            _ => 1,
        }
    }
}

/// The result of a command.
pub type Result<T, E = Error> = std::result::Result<T, E>;
