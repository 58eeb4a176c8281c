//! OpenTelemetry traces of a pod's life: the API server starts a trace when a pod
//! is created and carries its context in the pod's [`ANNOTATION`] (W3C
//! `traceparent`); the scheduler, the kubelet and the dataplane add their spans
//! under it. Spans are exported over OTLP (gRPC) when a component runs with
//! `--otlp-endpoint`; without it nothing is recorded.

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
    time::Duration,
};

pub use opentelemetry::KeyValue;
use opentelemetry::{
    Context, global,
    propagation::TextMapPropagator,
    trace::{SpanKind, TraceContextExt, Tracer},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{BatchConfigBuilder, SdkTracerProvider, span_processor_with_async_runtime},
};

/// The exemplar latency histograms attach to a bucket: the trace of the
/// operation observed there, so a slow bucket in Grafana links to its trace.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct TraceExemplar {
    /// The W3C trace id, 32 hex digits.
    pub trace_id: String,
}

/// A histogram whose buckets keep the latest observation's [`TraceExemplar`].
pub type TracedHistogram =
    prometheus_client::metrics::exemplar::HistogramWithExemplars<TraceExemplar>;

impl TraceExemplar {
    /// The exemplar of `cx`'s trace, when it has a valid one.
    pub fn of(cx: &Context) -> Option<Self> {
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| Self {
            trace_id: sc.trace_id().to_string(),
        })
    }

    /// The exemplar of the trace a pod's annotations carry (see [`ANNOTATION`]).
    pub fn of_pod(
        annotations: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Option<Self> {
        Self::of(&from_annotations(annotations)?)
    }
}

/// The pod annotation carrying the trace context of its life (W3C `traceparent`).
pub const ANNOTATION: &str = "sextant.io/traceparent";

static ENABLED: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Exports this process's spans to `endpoint` (e.g. `http://collector:4317`) as
/// `service`. Call once, inside the Tokio runtime.
pub fn init(endpoint: &str, service: &str) -> Result<(), crate::Error> {
    let failed = |message: String| crate::Error::Otlp {
        endpoint: endpoint.to_owned(),
        message,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let processor = span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_scheduled_delay(Duration::from_secs(1))
            .build(),
    )
    .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    global::set_tracer_provider(provider.clone());
    ENABLED
        .set(provider)
        .map_err(|_| failed("already initialised".into()))
}

/// Whether spans are exported at all.
pub fn enabled() -> bool {
    ENABLED.get().is_some()
}

/// The trace context a pod's annotations carry, if any.
pub fn from_annotations(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Option<Context> {
    let value = annotations?.get(ANNOTATION)?;
    let carrier: HashMap<String, String> = [("traceparent".to_owned(), value.clone())].into();
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The `traceparent` value of `cx`.
pub fn traceparent(cx: &Context) -> Option<String> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Starts a span named `name` under `parent` (a new trace without one), with
/// `attributes`; it ends when the returned context's span is ended or dropped.
pub fn start(name: &'static str, parent: Option<&Context>, attributes: Vec<KeyValue>) -> Context {
    let tracer = global::tracer("sextant");
    let builder = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_attributes(attributes);
    let span = match parent {
        Some(p) => builder.start_with_context(&tracer, p),
        None => builder.start_with_context(&tracer, &Context::new()),
    };
    Context::new().with_span(span)
}

/// Ends the span of `cx` now.
pub fn end(cx: &Context) {
    cx.span().end();
}

/// Spans in flight per pod (`namespace/name`), so a later step of the same
/// process (the dataplane's CNI ADD under the kubelet's pod start) can nest
/// under them.
static IN_FLIGHT: OnceLock<Mutex<HashMap<String, Context>>> = OnceLock::new();

fn in_flight() -> std::sync::MutexGuard<'static, HashMap<String, Context>> {
    IN_FLIGHT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records `cx` as the span in flight for pod `key` (`namespace/name`).
pub fn set_in_flight(key: &str, cx: &Context) {
    let mut all = in_flight();
    // Bounded: a pod whose span never ended is forgotten rather than kept.
    if all.len() > 4096 {
        all.clear();
    }
    all.insert(key.to_owned(), cx.clone());
}

/// The span in flight for pod `key`, if any.
pub fn in_flight_for(key: &str) -> Option<Context> {
    in_flight().get(key).cloned()
}

/// Forgets pod `key`'s span in flight.
pub fn clear_in_flight(key: &str) {
    in_flight().remove(key);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_through_annotations() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned();
        let annotations = [(ANNOTATION.to_owned(), value.clone())].into();
        let cx = from_annotations(Some(&annotations)).unwrap();
        assert_eq!(traceparent(&cx).as_deref(), Some(value.as_str()));
        let bad = [(ANNOTATION.to_owned(), "garbage".to_owned())].into();
        assert!(from_annotations(Some(&bad)).is_none());
    }
}
