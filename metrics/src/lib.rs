//! The one way every Sextant component exposes metrics and logs:
//! a prometheus-client [`Registry`] served as OpenMetrics text on `/metrics`
//! ([`router`], [`serve`]), and a `tracing` subscriber set up from flags
//! ([`init_tracing`]), and OpenTelemetry traces over OTLP ([`traces`]).
//!
//! Components register their metrics under their upstream names
//! (`apiserver_request_duration_seconds`, ...) on a registry they own and hand it
//! here; nothing in this crate knows a component's metrics.

pub mod traces;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
pub use prometheus_client::registry::Registry;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// The OpenMetrics text content type Prometheus negotiates for.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OTLP trace exporter could not be set up.
    #[error("OTLP exporter for {endpoint}: {message}")]
    Otlp {
        /// The collector's address.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The metrics listener could not be bound.
    #[error("binding the metrics endpoint on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The log filter given on the command line or in the environment is invalid.
    #[error("invalid log filter {filter:?}: {message}")]
    Filter {
        /// The filter text.
        filter: String,
        /// What the parser said.
        message: String,
    },
    /// A global subscriber was installed already.
    #[error("tracing was initialised twice")]
    AlreadyInitialised,
}

/// A registry shared between the code that updates metrics and the endpoint.
pub type SharedRegistry = Arc<Registry>;

/// Encodes the registry as OpenMetrics text (ending in `# EOF`).
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// A router serving `GET /metrics` from `registry`, to mount in a component's own
/// HTTP server or to serve alone with [`serve`].
pub fn router(registry: SharedRegistry) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(registry)
}

async fn metrics(State(registry): State<SharedRegistry>) -> Response {
    match encode(&registry) {
        Ok(body) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
                .into_response()
        }
    }
}

/// A bound metrics endpoint; [`MetricsServer::run`] serves it until the task is dropped.
#[derive(Debug)]
pub struct MetricsServer {
    listener: tokio::net::TcpListener,
    registry: SharedRegistry,
}

/// Binds `addr` (port 0 picks a free port) for `/metrics`. Binding happens now so
/// the caller learns the port and any error before serving.
pub async fn serve(addr: SocketAddr, registry: SharedRegistry) -> Result<MetricsServer, Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    Ok(MetricsServer { listener, registry })
}

impl MetricsServer {
    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the future is dropped or the listener fails.
    pub async fn run(self) -> std::io::Result<()> {
        axum::serve(self.listener, router(self.registry)).await
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" | "text" => Ok(Self::Human),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected human or json)"
            )),
        }
    }
}

/// Installs the global `tracing` subscriber on stderr. The filter is `level` when
/// given (a flag), else `SEXTANT_LOG`, else `RUST_LOG`, else `info`; `log` records
/// (aya-log, dependencies) are forwarded to it.
pub fn init_tracing(format: LogFormat, level: Option<&str>) -> Result<(), Error> {
    let filter_text = level
        .map(str::to_owned)
        .or_else(|| std::env::var("SEXTANT_LOG").ok())
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let filter = EnvFilter::try_new(&filter_text).map_err(|e| Error::Filter {
        filter: filter_text.clone(),
        message: e.to_string(),
    })?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Human => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|_| Error::AlreadyInitialised)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::{counter::Counter, family::Family};

    #[tokio::test]
    async fn serves_openmetrics_text() {
        let mut registry = Registry::default();
        let requests: Family<Vec<(String, String)>, Counter> = Family::default();
        registry.register("demo_requests", "Requests served", requests.clone());
        requests
            .get_or_create(&vec![("path".into(), "/x".into())])
            .inc_by(3);

        let server = serve("127.0.0.1:0".parse().unwrap(), Arc::new(registry))
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let task = tokio::spawn(server.run());

        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        task.abort();

        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains(OPENMETRICS_CONTENT_TYPE), "{response}");
        assert!(
            response.contains("demo_requests_total{path=\"/x\"} 3"),
            "{response}"
        );
        assert!(response.trim_end().ends_with("# EOF"), "{response}");
    }

    #[test]
    fn log_format_parses() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("human".parse::<LogFormat>(), Ok(LogFormat::Human));
        assert!("xml".parse::<LogFormat>().is_err());
    }

    #[test]
    fn bad_filter_is_an_error() {
        let err = init_tracing(LogFormat::Human, Some("=[")).unwrap_err();
        assert!(matches!(err, Error::Filter { .. }), "{err}");
    }
}
