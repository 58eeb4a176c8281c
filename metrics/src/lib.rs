//! The one way every Sextant component exposes metrics and logs:
//! a [`Registry`] (prometheus-client's, remembering which families the process
//! counts itself) served as OpenMetrics text on `/metrics` ([`router`],
//! [`serve`]) with `_created` samples and trace exemplars, the process's own
//! series ([`process`]), a `tracing` subscriber set up from flags
//! ([`init_tracing`]), and OpenTelemetry traces over OTLP ([`traces`]).
//!
//! Components register their metrics under their upstream names
//! (`apiserver_request_duration_seconds`, ...) on a registry they own and hand it
//! here; nothing in this crate knows a component's metrics.

pub mod process;
pub mod traces;

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{collector::Collector, registry::Metric};
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

/// A prometheus-client registry that remembers which families the process
/// counts itself ([`Registry::register`]) as opposed to reads from elsewhere
/// ([`Registry::register_collector`]: pinned eBPF maps, the API's objects), so
/// only the former get a `_created` sample at the process's start: a counter
/// read from a map that outlives the process was not reset when it started.
#[derive(Debug, Default)]
pub struct Registry {
    inner: prometheus_client::registry::Registry,
    counted_here: BTreeSet<String>,
}

impl Registry {
    /// Registers a metric this process counts from zero (prometheus-client's
    /// `register`: counters get `_total` appended).
    pub fn register<N: Into<String>, H: Into<String>>(
        &mut self,
        name: N,
        help: H,
        metric: impl Metric,
    ) {
        let name = name.into();
        self.counted_here.insert(name.clone());
        self.inner.register(name, help, metric);
    }

    /// Registers a collector, whose series are read at each scrape from state
    /// the process does not own; its counters carry no `_created`.
    pub fn register_collector(&mut self, collector: Box<dyn Collector>) {
        self.inner.register_collector(collector);
    }
}

/// A registry shared between the code that updates metrics and the endpoint.
pub type SharedRegistry = Arc<Registry>;

/// Encodes the registry as OpenMetrics text (ending in `# EOF`); the counters and
/// histograms the process counts itself carry `_created` (its start time).
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let text = encode_external(&registry.inner)?;
    Ok(match process::start_time() {
        Some(start) => with_created(&text, &registry.counted_here, start),
        None => text,
    })
}

/// Encodes a plain prometheus-client registry of state this process only reads
/// (cAdvisor's container counters): OpenMetrics text without `_created`.
pub fn encode_external(
    registry: &prometheus_client::registry::Registry,
) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Adds `<family>_created{labels} <created>` after each counter's `_total`
/// sample and after each histogram's `+Inf` bucket (the end of its point, as
/// the OpenMetrics examples order them), for the families in `families`.
fn with_created(text: &str, families: &BTreeSet<String>, created: f64) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    // The family of the lines being read and its type, when it gets `_created`.
    let mut current: Option<(&str, &str)> = None;
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            current = rest.split_once(' ').filter(|(name, kind)| {
                matches!(*kind, "counter" | "histogram") && families.contains(*name)
            });
            continue;
        }
        let Some((family, kind)) = current else {
            continue;
        };
        if line.starts_with('#') {
            continue;
        }
        let (metric, labels) = split_sample(line);
        let labels = match kind {
            "counter" if metric.strip_suffix("_total") == Some(family) => labels.to_owned(),
            "histogram" if metric.strip_suffix("_bucket") == Some(family) => {
                // prometheus-client writes `le` first in a family, alone otherwise.
                if let Some(rest) = labels.strip_prefix("{le=\"+Inf\",") {
                    format!("{{{rest}")
                } else if labels == "{le=\"+Inf\"}" {
                    String::new()
                } else {
                    continue;
                }
            }
            _ => continue,
        };
        out.push_str(&format!("{family}_created{labels} {created:.3}\n"));
    }
    out
}

/// A sample line's metric name and its label set (`{...}`, or empty).
fn split_sample(line: &str) -> (&str, &str) {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let (name, rest) = line.split_at(name_end);
    if !rest.starts_with('{') {
        return (name, "");
    }
    // The closing brace outside quoted values (which may hold `}` or `\"`).
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return (name, &rest[..=i]),
            _ => {}
        }
    }
    (name, "")
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
    fn created_follows_what_the_process_counts_itself() {
        use prometheus_client::metrics::{
            counter::ConstCounter, gauge::Gauge, histogram::Histogram,
        };
        #[derive(Debug)]
        struct Pinned;
        impl Collector for Pinned {
            fn encode(
                &self,
                mut encoder: prometheus_client::encoding::DescriptorEncoder,
            ) -> Result<(), std::fmt::Error> {
                use prometheus_client::encoding::EncodeMetric;
                let c = ConstCounter::new(7u64);
                c.encode(encoder.encode_descriptor("pinned_packets", "x", None, c.metric_type())?)
            }
        }
        let mut registry = Registry::default();
        let requests: Family<Vec<(String, String)>, Counter> = Family::default();
        registry.register("demo_requests", "Requests", requests.clone());
        requests
            .get_or_create(&vec![("path".into(), "/a}b\"c".into())])
            .inc();
        let latency: Family<Vec<(String, String)>, traces::TracedHistogram> =
            Family::new_with_constructor(|| traces::TracedHistogram::new([0.1, 1.0].into_iter()));
        registry.register("demo_latency_seconds", "Latency", latency.clone());
        latency
            .get_or_create(&vec![("verb".into(), "GET".into())])
            .observe(
                0.05,
                Some(traces::TraceExemplar {
                    trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                }),
                None,
            );
        let plain = Histogram::new([1.0]);
        plain.observe(0.5);
        registry.register("demo_plain", "Plain", plain);
        registry.register("demo_in_flight", "Gauge", Gauge::<i64>::default());
        registry.register_collector(Box::new(Pinned));

        let text = encode(&registry).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let created: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains("_created"))
            .collect();
        let start = process::start_time().unwrap();
        assert_eq!(created.len(), 3, "{text}");
        assert!(
            created[0].starts_with("demo_requests_created{path=\"/a}b\\\"c\"} "),
            "{text}"
        );
        assert!(created[1].starts_with("demo_latency_seconds_created{verb=\"GET\"} "));
        assert!(created[2].starts_with("demo_plain_created "), "{text}");
        for c in &created {
            let t: f64 = c.rsplit(' ').next().unwrap().parse().unwrap();
            assert!((t - start).abs() < 0.01, "{c} vs {start}");
        }
        // Each `_created` ends its point: right after `_total` or the +Inf bucket.
        let at = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix)).unwrap();
        assert_eq!(at("demo_requests_created"), at("demo_requests_total") + 1);
        assert_eq!(
            at("demo_latency_seconds_created"),
            at("demo_latency_seconds_bucket{le=\"+Inf\"") + 1
        );
        // The exemplar names its trace on the bucket that took the observation.
        assert!(
            text.contains(
                "_bucket{le=\"0.1\",verb=\"GET\"} 1 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.05"
            ),
            "{text}"
        );
        // Gauges and collectors' counters (state the process did not count) get none.
        assert!(!text.contains("demo_in_flight_created"));
        assert!(!text.contains("pinned_packets_created"), "{text}");
        assert!(text.contains("pinned_packets_total 7"));
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn process_series_are_exported() {
        let mut registry = Registry::default();
        process::register(&mut registry);
        let text = encode(&registry).unwrap();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
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
