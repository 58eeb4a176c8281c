//! The one error type of `sextantctl`, printed the way kubectl prints its own:
//! the server's Status message with its reason, never a stack trace.

use kube::core::response::StatusDetails;

/// A Status as kubectl's `CheckErr` prints it: `Invalid` as "The <Kind>
/// "<name>" is invalid: <field>: <message>" (one line per cause when there
/// are several), `Unauthorized` as a login hint, the rest with their reason.
fn server_text(reason: &str, message: &str, details: Option<&StatusDetails>) -> String {
    match (reason, details) {
        // kubectl 1.33 meets a 401 first in discovery, where client-go words it so.
        ("Unauthorized", _) => "error: You must be logged in to the server (the server has asked for the client to provide credentials)".into(),
        ("Invalid", None) if message.is_empty() => "The request is invalid".into(),
        ("Invalid", None) => format!("The request is invalid: {message}"),
        ("Invalid", Some(d)) => {
            let (kind, name) = (&d.kind, &d.name);
            let causes: Vec<String> = d
                .causes
                .iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect();
            let head = if !kind.is_empty() || !name.is_empty() {
                format!("The {kind} {name:?} is invalid")
            } else {
                "The request is invalid".into()
            };
            match causes.as_slice() {
                [] => head,
                [one] => format!("{head}: {one}"),
                many => format!("{head}: \n* {}", many.join("\n* ")),
            }
        }
        _ => format!("Error from server ({reason}): {message}"),
    }
}

/// What can go wrong in a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a Status (401, 403, 404, 409, 422, ...).
    #[error("{}", server_text(reason, message, details.as_deref()))]
    Server {
        /// The Status reason (`NotFound`, `AlreadyExists`, `Invalid`, ...).
        reason: String,
        /// The Status message.
        message: String,
        /// The HTTP code.
        code: u16,
        /// The Status details (kind, name, causes), for kubectl's wording of
        /// `Invalid`.
        details: Option<Box<StatusDetails>>,
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
                details: status.details.clone().map(Box::new),
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
