//! The kubelet's metrics, under upstream's names: `kubelet_running_pods`,
//! `kubelet_running_containers{container_state}`, `kubelet_pod_start_duration_seconds`,
//! `kubelet_runtime_operations_errors_total{operation_type}`,
//! `kubelet_runtime_operations_duration_seconds{operation_type}`,
//! `prober_probe_total{probe_type,result}`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
};
use sextant_metrics::{Registry, traces::TracedHistogram};

/// Labels with a container state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `running`, `exited`, `created`, `unknown`.
    pub container_state: String,
}

/// Labels with a CRI operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `run_podsandbox`, `create_container`, `start_container`, ...
    pub operation_type: String,
}

/// Upstream's buckets for pod start duration.
const START_BUCKETS: [f64; 15] = [
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0,
];

/// The kubelet's metrics.
#[derive(Clone, Debug)]
pub struct KubeletMetrics {
    /// Pods with a running sandbox.
    pub running_pods: Gauge,
    /// Containers by state.
    pub containers: Family<StateLabels, Gauge>,
    /// From the kubelet first seeing a pod to all its containers running.
    pub pod_start: TracedHistogram,
    /// Failed CRI calls.
    pub runtime_errors: Family<OperationLabels, Counter>,
    /// CRI call latency.
    pub runtime_latency: crate::cri::OperationLatency,
    /// Probe results.
    pub probes: Family<ProbeLabels, Counter>,
}

/// Labels of `prober_probe_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    /// `Liveness`, `Readiness`, `Startup`.
    pub probe_type: String,
    /// `successful` or `failed`.
    pub result: String,
}

impl KubeletMetrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            running_pods: Gauge::default(),
            containers: Family::default(),
            pod_start: TracedHistogram::new(START_BUCKETS.into_iter()),
            runtime_errors: Family::default(),
            runtime_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.5, 14))
            }),
            probes: Family::default(),
        };
        registry.register(
            "kubelet_runtime_operations_duration_seconds",
            "Duration in seconds of container runtime operations, by operation",
            m.runtime_latency.clone(),
        );
        registry.register(
            "prober_probe",
            "Probe results, by probe type and result",
            m.probes.clone(),
        );
        registry.register(
            "kubelet_running_pods",
            "Pods with a running sandbox",
            m.running_pods.clone(),
        );
        registry.register(
            "kubelet_running_containers",
            "Containers by state",
            m.containers.clone(),
        );
        registry.register(
            "kubelet_pod_start_duration_seconds",
            "Seconds from the kubelet seeing a pod to all its containers running",
            m.pod_start.clone(),
        );
        registry.register(
            "kubelet_runtime_operations_errors",
            "Failed container runtime operations, by operation",
            m.runtime_errors.clone(),
        );
        m
    }

    /// Counts a probe result.
    pub fn probe(&self, kind: crate::probes::Kind, success: bool) {
        self.probes
            .get_or_create(&ProbeLabels {
                probe_type: kind.title().to_owned(),
                result: if success { "successful" } else { "failed" }.to_owned(),
            })
            .inc();
    }

    /// Counts a failed CRI call.
    pub fn runtime_error(&self, operation: &str) {
        self.runtime_errors
            .get_or_create(&OperationLabels {
                operation_type: operation.to_owned(),
            })
            .inc();
    }
}
