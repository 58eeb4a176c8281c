//! A pod's life as one OpenTelemetry trace, exported over OTLP by the server and
//! the agents (`--otlp-endpoint`) to a receiver in the test: the API server's
//! span for the create is the root, the scheduler's binding and the kubelet's
//! sandbox creation are its children, and the dataplane's attach of the pod's
//! interface is the kubelet span's child. Two network-namespace nodes, real
//! containerd and Sextant's own pod networking.
//!
//! The latency histograms name the trace as an exemplar: the API server's
//! request duration (the create), the scheduler's scheduling duration and the
//! kubelet's pod start duration each carry the pod's trace id.
//!
//! The components log JSON here (`--log-format=json`): every line of the server
//! and the agents is one JSON object, and the kubelet's lines about the pod carry
//! its namespace and name.
// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as AnyValue,
};
use serde_json::Value;
use sextant_tests::agent::NetworkCluster;
use tonic::{Request, Response, Status};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");

/// One received span.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    pod: String,
}

/// An OTLP/gRPC trace receiver keeping every span.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    AnyValue::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                let pod = s
                    .attributes
                    .iter()
                    .find(|a| a.key == "k8s.pod.name")
                    .and_then(|a| a.value.as_ref()?.value.as_ref())
                    .map(|v| match v {
                        AnyValue::StringValue(s) => s.clone(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default();
                spans.push(Received {
                    service: service.clone(),
                    name: s.name,
                    trace_id: s.trace_id,
                    span_id: s.span_id,
                    parent_span_id: s.parent_span_id,
                    pod,
                });
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test]
async fn a_pods_life_is_one_trace_across_the_components() {
    // On every address, so the agents in their namespaces reach it through the
    // fabric's host address.
    let port = sextant_tests::free_port().unwrap();
    let receiver = Receiver::default();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve(SocketAddr::from(([0, 0, 0, 0], port))),
    );
    let cluster = NetworkCluster::start_with_flags(Path::new(BINARY), 2, |host| {
        vec![
            "--otlp-endpoint".into(),
            format!("http://{host}:{port}"),
            "--log-format=json".into(),
        ]
    })
    .await
    .expect("two-node cluster");
    let k = cluster.server.kubectl().unwrap();
    k.ok(&[
        "run",
        "traced",
        "--image=sextant.local/demo:v1",
        "--restart=Never",
    ])
    .unwrap();
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/traced",
        "--timeout=60s",
    ])
    .unwrap();
    let traceparent = k
        .ok(&[
            "get",
            "pod",
            "traced",
            "-o",
            r#"jsonpath={.metadata.annotations.sextant\.io/traceparent}"#,
        ])
        .unwrap();
    assert!(traceparent.starts_with("00-"), "{traceparent:?}");

    let wanted = [
        "apiserver: create pod",
        "scheduler: bind pod",
        "kubelet: create pod sandbox",
        "dataplane: attach pod",
    ];
    let mut spans = Vec::new();
    for _ in 0..60 {
        spans = receiver
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.pod.ends_with("traced"))
            .cloned()
            .collect::<Vec<_>>();
        if wanted.iter().all(|w| spans.iter().any(|s| s.name == *w)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name:?} span in {spans:#?}"))
    };
    let root = find("apiserver: create pod");
    let bind = find("scheduler: bind pod");
    let sandbox = find("kubelet: create pod sandbox");
    let attach = find("dataplane: attach pod");
    assert!(root.parent_span_id.is_empty(), "the create is the root");
    assert_eq!(root.service, "sextant-server");
    assert_eq!(sandbox.service, "sextant-agent");
    for child in [&bind, &sandbox, &attach] {
        assert_eq!(
            child.trace_id, root.trace_id,
            "{child:?} in the pod's trace"
        );
    }
    assert_eq!(bind.parent_span_id, root.span_id, "bind under the create");
    assert_eq!(
        sandbox.parent_span_id, root.span_id,
        "sandbox under the create"
    );
    assert_eq!(
        attach.parent_span_id, sandbox.span_id,
        "attach under the sandbox"
    );
    // The annotation names the root span's trace.
    let trace_hex: String = root.trace_id.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        traceparent.contains(&trace_hex),
        "{traceparent} vs {trace_hex}"
    );
    exemplars(&cluster, &trace_hex).await;
    json_logs(&cluster);
    serving.abort();
}

/// The pod's trace is an exemplar on the server's request and scheduling
/// latency buckets and on its node's pod start latency.
async fn exemplars(cluster: &NetworkCluster, trace_hex: &str) {
    let exemplar = format!("# {{trace_id=\"{trace_hex}\"}}");
    let c = cluster.server.http_client().unwrap();
    let server = c
        .get(format!("{}/metrics", cluster.server.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let with = |text: &str, family: &str| {
        text.lines()
            .any(|l| l.starts_with(&format!("{family}_bucket")) && l.contains(&exemplar))
    };
    let creates: Vec<&str> = server
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_duration_seconds_bucket") && l.contains(&exemplar)
        })
        .collect();
    assert!(
        creates
            .iter()
            .any(|l| l.contains("verb=\"POST\"") && l.contains("resource=\"pods\"")),
        "no POST pods bucket with {exemplar}: {creates:#?}"
    );
    assert!(
        with(&server, "scheduler_pod_scheduling_duration_seconds"),
        "no scheduling bucket with {exemplar}"
    );
    let mut started = false;
    for a in &cluster.agents {
        started |= with(
            &a.metrics().await.unwrap(),
            "kubelet_pod_start_duration_seconds",
        );
    }
    assert!(
        started,
        "no kubelet_pod_start_duration_seconds bucket with {exemplar}"
    );
    // OpenMetrics `_created` on what the server counts itself.
    assert!(
        server
            .lines()
            .any(|l| l.starts_with("apiserver_request_created{")),
        "no apiserver_request_created"
    );
    assert!(
        server.contains("\nprocess_start_time_seconds "),
        "process series"
    );
}

/// Every log line is a JSON object with a level, a target and a timestamp; the
/// kubelet's line starting the pod's container names the pod as fields.
fn json_logs(cluster: &NetworkCluster) {
    let mut logs = vec![("server".to_owned(), cluster.server.log_tail(100_000))];
    for (i, a) in cluster.agents.iter().enumerate() {
        logs.push((format!("agent {i}"), a.log_tail(100_000)));
    }
    let mut starting = Vec::new();
    for (who, text) in &logs {
        assert!(!text.is_empty(), "{who} logged nothing");
        for line in text.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{who} logged a line that is not JSON ({e}): {line}"));
            for field in ["timestamp", "level", "target"] {
                assert!(v[field].is_string(), "{who}: no {field} in {line}");
            }
            if v["message"] == "starting the container" && v["span"]["pod"] == "traced" {
                starting.push(v);
            }
        }
    }
    let line = starting
        .first()
        .unwrap_or_else(|| panic!("no JSON line starting pod traced's container"));
    assert_eq!(line["span"]["namespace"], "default", "{line}");
    assert_eq!(line["pod"], "default/traced", "{line}");
    assert_eq!(line["container"], "traced", "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
}
