//! ClusterIP load balancing in the eBPF datapath, on two network-namespace nodes
//! with real agents, containerd and pods: a Deployment of 3 demo pods behind a
//! Service; a client pod's requests to the VIP (TCP and UDP) reach every backend,
//! on its own node and the other; scaling to 1 and back is reflected in the maps;
//! a pod that turns not-ready gets no new connections; a Service without ready
//! endpoints drops new flows, counted by reason; a backend reaches its own
//! Service, itself included (hairpin); a NodePort answers on every
//! node's address from outside, and with externalTrafficPolicy Local from that
//! node's pods only.
// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde_json::Value;
use sextant_dataplane::api::{Flow, ObserveRequest};
use sextant_tests::{agent::NetworkCluster, sextant::Kubectl};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");

/// A Service over the same pods with ClientIP session affinity.
const STICKY: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web-sticky}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: 8080}
"#;

/// A NodePort Service over the same pods.
const NODE_PORT: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web-np}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
"#;

/// `count` requests from the test process (outside every pod and node
/// namespace) to `to`, one connection each: answers by hostname.
async fn from_outside(to: &str, count: u32) -> BTreeMap<String, u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut answers = BTreeMap::new();
    for _ in 0..count {
        let get = async {
            let mut conn = tokio::net::TcpStream::connect(to).await.ok()?;
            let req = format!("GET / HTTP/1.1\r\nhost: {to}\r\nconnection: close\r\n\r\n");
            conn.write_all(req.as_bytes()).await.ok()?;
            let mut reply = Vec::new();
            conn.read_to_end(&mut reply).await.ok()?;
            let text = String::from_utf8_lossy(&reply).into_owned();
            let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1)?).ok()?;
            body["hostname"].as_str().map(str::to_owned)
        };
        let host = tokio::time::timeout(Duration::from_secs(5), get)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| "(failed)".into());
        *answers.entry(host).or_default() += 1;
    }
    answers
}

/// A headless Service over the same pods.
const HEADLESS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web-headless}
spec:
  clusterIP: None
  selector: {app: web}
  ports:
  - {name: http, port: 8080}
"#;

fn workload(client_node: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: sextant.local/demo:v1
        readinessProbe:
          httpGet: {{path: /readyz, port: 8080}}
          periodSeconds: 1
          failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: echo, port: 9000, targetPort: 8080, protocol: UDP}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: {client_node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: sextant.local/demo:v1
    command: [sleep, "3600"]
"#
    )
}

/// A pod on `node` that sends 400 requests to `to`, 15 ms apart, and prints the tally.
fn request_loop(node: &str, to: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: loop}}
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
  - name: main
    image: sextant.local/demo:v1
    command: [/demo, --http-get, "{to}", --count, "400", --interval-ms, "15"]
"#
    )
}

/// `--http-get` from the client pod: answers by hostname, and failures.
fn requests(k: &Kubectl, to: &str, count: u32) -> (BTreeMap<String, u64>, u64, Value) {
    let out = k
        .run(
            &[
                "exec",
                "client",
                "--",
                "/demo",
                "--http-get",
                to,
                "--count",
                &count.to_string(),
            ],
            None,
        )
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let answers = v["answers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(h, n)| (h.clone(), n.as_u64().unwrap()))
        .collect();
    (answers, v["failed"].as_u64().unwrap(), v)
}

/// The `items` of `kubectl get <args> -o json`.
fn items(k: &Kubectl, args: &[&str]) -> Vec<Value> {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    let list: Value = serde_json::from_str(&k.ok(&args).unwrap()).unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

fn ready_pods(k: &Kubectl) -> Vec<String> {
    items(k, &["get", "pods", "-l", "app=web"])
        .iter()
        .filter(|p| {
            p["metadata"]["deletionTimestamp"].is_null()
                && p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Ready addresses in the Service's EndpointSlices.
fn ready_endpoints(k: &Kubectl) -> usize {
    items(
        k,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
        ],
    )
    .iter()
    .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
    .filter(|e| e["conditions"]["ready"] != false)
    .count()
}

/// Up to `n` flows from `stream`, waiting at most 10 s.
async fn collect(mut stream: tonic::Streaming<Flow>, n: usize) -> Vec<Flow> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(f))) => out.push(f),
            _ => break,
        }
    }
    out
}

async fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while started.elapsed() < within {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {within:?} waiting for {what}");
}

#[tokio::test]
async fn cluster_ip_balances_over_ready_backends_on_both_nodes() {
    let mut cluster = NetworkCluster::start(Path::new(BINARY), 2)
        .await
        .expect("two-node cluster");
    let k = cluster.server.kubectl().unwrap();
    let node_a = cluster.agents[0].node_name.clone();
    k.ok_with(&["apply", "-f", "-"], Some(&workload(&node_a)))
        .unwrap();
    if let Err(e) = k.ok(&["rollout", "status", "deploy/web", "--timeout=90s"]) {
        panic!(
            "{e}\n{}\nagent a:\n{}",
            k.ok(&["get", "pods", "-o", "wide"]).unwrap_or_default(),
            cluster.agents[0].log_tail(20)
        );
    }
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=60s",
    ])
    .unwrap();
    until("3 ready endpoints", Duration::from_secs(20), || {
        ready_endpoints(&k) == 3
    })
    .await;
    let vip = k
        .ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .unwrap();
    let web = format!("{vip}:80");
    let nodes: BTreeMap<String, String> = ready_pods(&k)
        .into_iter()
        .map(|p| {
            let node = k
                .ok(&["get", "pod", &p, "-o", "jsonpath={.spec.nodeName}"])
                .unwrap();
            (p, node)
        })
        .collect();
    eprintln!("backends: {nodes:?}");

    let a = &cluster.agents[0];
    // The flows of web's Service, as `sextantctl flows --service web` will show them.
    let web_flows = a
        .observe(ObserveRequest {
            service: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // 300 requests by VIP reach all 3 backends, none fails.
    let new_before = a
        .counter(
            "sextant_dataplane_service_packets_total",
            "event=\"new_flow\"",
        )
        .await
        .unwrap();
    let (answers, failed, raw) = requests(&k, &web, 300);
    assert_eq!(failed, 0, "{raw}");
    assert_eq!(answers.len(), 3, "every backend answers: {raw}");
    assert_eq!(answers.values().sum::<u64>(), 300);
    let new_after = a
        .counter(
            "sextant_dataplane_service_packets_total",
            "event=\"new_flow\"",
        )
        .await
        .unwrap();
    assert!(
        new_after >= new_before + 300,
        "new flows balanced in the datapath: {new_before} → {new_after}"
    );
    // Every packet of those flows, both ways, is counted on the client's node.
    let frontend = format!("namespace=\"default\",service=\"web\",frontend=\"{web}/TCP\"");
    let packets = a
        .counter(
            "sextant_dataplane_service_frontend_packets_total",
            &frontend,
        )
        .await
        .unwrap();
    assert!(packets >= 300 * 4, "web's frontend packets: {packets}");
    // The conntrack table holds them (map pressure is sampled every 10 s).
    let tracked = sextant_tests::wait_for(
        "conntrack entries in the map gauges",
        Duration::from_secs(15),
        Duration::from_millis(500),
        || async {
            a.counter("sextant_dataplane_map_entries", "map=\"SX_CT4_V1\"")
                .await
                .ok()
                .filter(|n| *n > 0)
        },
    )
    .await
    .unwrap();
    eprintln!("conntrack entries: {tracked}");
    let seen = collect(web_flows, 300).await;
    assert!(seen.len() >= 300, "flows observed: {}", seen.len());
    assert!(
        seen.iter().all(|f| f.verdict == "forwarded"
            && f.service == "default/web"
            && f.source_pod == "default/client"
            && f.service_frontend == web),
        "{:?}",
        seen.first()
    );

    // The API server as the `default/kubernetes` Service: 10.96.0.1:443 with the
    // server's address behind it, reachable from pods (TLS answers a plain GET
    // with an alert and a close: connected, not refused or timed out).
    let api = k
        .ok(&[
            "get",
            "svc",
            "kubernetes",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .unwrap();
    assert_eq!(api, "10.96.0.1");
    let behind = k
        .ok(&[
            "get",
            "endpointslice",
            "kubernetes",
            "-o",
            "jsonpath={.endpoints[*].addresses[*]}",
        ])
        .unwrap();
    assert_eq!(behind, cluster.host_ip.to_string());
    let (_, failed, raw) = requests(&k, "10.96.0.1:443", 1);
    let error = raw["errors"][0].as_str().unwrap_or_default();
    assert!(
        failed == 1 && !error.starts_with("connect") && !error.starts_with("timed out"),
        "{raw}"
    );

    // Pods get upstream's service variables: the API server's and their namespace's.
    let vars = k
        .ok(&[
            "exec",
            "client",
            "--",
            "sh",
            "-c",
            "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT $WEB_SERVICE_HOST:$WEB_SERVICE_PORT_HTTP",
        ])
        .unwrap();
    assert_eq!(vars.trim(), format!("10.96.0.1:443 {web}"));

    // Hairpin: a backend reaching its own Service, itself included.
    let backend = nodes.keys().next().unwrap().clone();
    let out = k
        .run(
            &[
                "exec",
                &backend,
                "--",
                "/demo",
                "--http-get",
                &web,
                "--count",
                "30",
            ],
            None,
        )
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failed"], 0, "hairpin from {backend}: {v}");
    assert!(
        v["answers"][&backend].as_u64() > Some(0),
        "{backend} reached itself: {v}"
    );

    // NodePort: from outside the cluster's namespaces (the host), every node's
    // address answers, from backends on that node and on the other.
    k.ok_with(&["apply", "-f", "-"], Some(NODE_PORT)).unwrap();
    let node_port = k
        .ok(&[
            "get",
            "svc",
            "web-np",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ])
        .unwrap();
    let node_ips: Vec<String> = cluster
        .agents
        .iter()
        .map(|agent| {
            k.ok(&[
                "get",
                "node",
                &agent.node_name,
                "-o",
                r#"jsonpath={.status.addresses[?(@.type=="InternalIP")].address}"#,
            ])
            .unwrap()
        })
        .collect();
    let xdp = r#"path="xdp""#;
    let mut xdp_before = Vec::new();
    for agent in &cluster.agents {
        xdp_before.push(
            agent
                .counter("sextant_dataplane_forwarded_packets_total", xdp)
                .await
                .unwrap(),
        );
    }
    for ip in &node_ips {
        let to = format!("{ip}:{node_port}");
        let answers = from_outside(&to, 30).await;
        assert_eq!(answers.len(), 3, "{to}: every backend answers: {answers:?}");
    }
    // Flows to the other node's backend went through each node's uplink XDP
    // program, both ways (the first may take the TC path while the kernel
    // resolves the other node's MAC).
    for (agent, before) in cluster.agents.iter().zip(xdp_before) {
        let after = agent
            .counter("sextant_dataplane_forwarded_packets_total", xdp)
            .await
            .unwrap();
        assert!(
            after >= before + 20,
            "{}: NodePort packets sent by XDP: {before} → {after}",
            agent.node_name
        );
    }
    // externalTrafficPolicy Local: a node answers from its own pods only.
    k.ok(&[
        "patch",
        "svc",
        "web-np",
        "-p",
        r#"{"spec":{"externalTrafficPolicy":"Local"}}"#,
    ])
    .unwrap();
    let on_a: Vec<&String> = nodes
        .iter()
        .filter(|(_, n)| **n == node_a)
        .map(|(p, _)| p)
        .collect();
    let to = format!("{}:{node_port}", node_ips[0]);
    let mut answers = BTreeMap::new();
    for _ in 0..20 {
        answers = from_outside(&to, 20).await;
        if answers.keys().all(|h| on_a.contains(&h)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !answers.is_empty() && answers.keys().all(|h| on_a.contains(&h)),
        "only node a's pods {on_a:?}: {answers:?}"
    );

    // By name, through the node agents' cluster DNS (kube-dns): the full name, and
    // the short ones through the pod's search path.
    for name in [
        "web.default.svc.cluster.local:80",
        "web.default:80",
        "web:80",
    ] {
        let (answers, failed, raw) = requests(&k, name, 30);
        assert_eq!((answers.len(), failed), (3, 0), "{name}: {raw}");
    }
    // A headless Service resolves to every ready pod.
    k.ok_with(&["apply", "-f", "-"], Some(HEADLESS)).unwrap();
    let mut pod_ips: Vec<String> = ready_pods(&k)
        .iter()
        .map(|p| {
            k.ok(&["get", "pod", p, "-o", "jsonpath={.status.podIP}"])
                .unwrap()
        })
        .collect();
    pod_ips.sort();
    let mut resolved = Vec::new();
    for _ in 0..20 {
        let out = k.run(
            &[
                "exec",
                "client",
                "--",
                "/demo",
                "--resolve",
                "web-headless.default.svc.cluster.local",
            ],
            None,
        );
        if let Ok(o) = out
            && let Ok(ips) = serde_json::from_slice::<Vec<String>>(&o.stdout)
        {
            resolved = ips;
            if resolved == pod_ips {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(resolved, pod_ips, "the headless Service's A records");
    let dns_ip = k
        .ok(&[
            "get",
            "svc",
            "-n",
            "kube-system",
            "kube-dns",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .unwrap();
    assert_eq!(dns_ip, "10.96.0.10");

    // ClientIP affinity: every new connection from the client reaches one backend.
    k.ok_with(&["apply", "-f", "-"], Some(STICKY)).unwrap();
    let mut sticky = (BTreeMap::new(), 1, Value::Null);
    for _ in 0..20 {
        sticky = requests(&k, "web-sticky:80", 30);
        if sticky.1 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!((sticky.0.len(), sticky.1), (1, 0), "{}", sticky.2);

    // UDP through the VIP's UDP port. UDP may drop a datagram, so up to three
    // are sent; every attempt is reported if none is answered.
    let udp = format!("{vip}:9000");
    let send = [
        "exec",
        "client",
        "--",
        "/demo",
        "--send-udp",
        &udp,
        "--message",
        "via-vip",
    ];
    let mut attempts = Vec::new();
    let mut out = String::new();
    for _ in 0..3 {
        let run = k.run(&send, None).unwrap();
        out = String::from_utf8_lossy(&run.stdout).into_owned();
        if run.status.success() && out.contains(" via-vip (from ") {
            break;
        }
        attempts.push(format!(
            "{}: stdout {out:?} stderr {:?}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        ));
    }
    assert!(out.contains(" via-vip (from "), "{attempts:#?}");
    assert!(
        out.contains(&format!("(from {udp})")),
        "replies come from the VIP: {out}"
    );

    // Scale to 1: only that backend answers; back to 3: all do.
    k.ok(&["scale", "deploy/web", "--replicas=1"]).unwrap();
    until("1 ready endpoint", Duration::from_secs(30), || {
        ready_endpoints(&k) == 1
    })
    .await;
    let started = std::time::Instant::now();
    let mut answered = BTreeMap::new();
    while started.elapsed() < Duration::from_secs(2) {
        answered = requests(&k, &web, 20).0;
        if answered.len() == 1 {
            break;
        }
    }
    assert_eq!(
        answered.len(),
        1,
        "scaled to 1 within 2 s of the slice: {answered:?}"
    );
    k.ok(&["scale", "deploy/web", "--replicas=3"]).unwrap();
    until("3 ready endpoints again", Duration::from_secs(60), || {
        ready_endpoints(&k) == 3
    })
    .await;
    let (answers, failed, raw) = requests(&k, &web, 60);
    assert_eq!((answers.len(), failed), (3, 0), "{raw}");

    // kill -9 of the client node's agent during a request loop: no request fails
    // (programs and maps are pinned), and the restarted agent keeps the maps.
    k.ok_with(&["apply", "-f", "-"], Some(&request_loop(&node_a, &web)))
        .unwrap();
    until("the request loop to run", Duration::from_secs(30), || {
        k.ok(&["get", "pod", "loop", "-o", "jsonpath={.status.phase}"])
            .is_ok_and(|p| p == "Running")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.agents[0]
        .restart(&cluster.server)
        .await
        .expect("agent a back");
    until(
        "the request loop to finish",
        Duration::from_secs(90),
        || {
            k.ok(&["get", "pod", "loop", "-o", "jsonpath={.status.phase}"])
                .is_ok_and(|p| p == "Succeeded" || p == "Failed")
        },
    )
    .await;
    let log: Value = serde_json::from_str(k.ok(&["logs", "loop"]).unwrap().trim()).unwrap();
    assert_eq!(
        log["failed"], 0,
        "requests failed across the agent's restart: {log}"
    );
    assert_eq!(log["answers"].as_object().unwrap().len(), 3, "{log}");
    let pinned = cluster.agents[0].bpf_dir().join("maps/SX_LB4_SERVICES_V2");
    let dump = sextant_tests::run(
        std::process::Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(&pinned)
            .arg("-j"),
    )
    .unwrap();
    let frontends: Vec<Value> = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        frontends.len(),
        8,
        "web's TCP and UDP frontends, web-sticky's, web-np's ClusterIP and nodePort, kube-dns's two and kubernetes's: {dump}"
    );
    let a = &cluster.agents[0];

    // A backend that turns not-ready gets no new connections.
    let pods = ready_pods(&k);
    let sick = &pods[0];
    let sick_ip = k
        .ok(&["get", "pod", sick, "-o", "jsonpath={.status.podIP}"])
        .unwrap();
    let out = k
        .ok(&[
            "exec",
            "client",
            "--",
            "sh",
            "-c",
            &format!(
                "(printf 'POST /fail?probe=readiness&fail=true HTTP/1.0\\r\\ncontent-length: 0\\r\\n\\r\\n'; sleep 1) | nc -w 5 {sick_ip} 8080"
            ),
        ])
        .unwrap();
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    until(
        "the sick pod's endpoint not ready",
        Duration::from_secs(20),
        || ready_endpoints(&k) == 2,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (answers, failed, raw) = requests(&k, &web, 60);
    assert_eq!(failed, 0, "{raw}");
    assert!(
        !answers.contains_key(sick),
        "{sick} is not ready yet answered: {raw}"
    );
    assert_eq!(answers.len(), 2, "{raw}");

    // No ready endpoint: new flows are dropped and counted.
    k.ok(&["scale", "deploy/web", "--replicas=0"]).unwrap();
    until("no endpoints", Duration::from_secs(30), || {
        ready_endpoints(&k) == 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dropped = a
        .observe(ObserveRequest {
            verdict: "dropped".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let drops_before = a
        .counter("sextant_dataplane_drops_total", "reason=\"no_backend\"")
        .await
        .unwrap();
    let (_, failed, _) = requests(&k, &web, 1);
    assert_eq!(failed, 1);
    let drops_after = a
        .counter("sextant_dataplane_drops_total", "reason=\"no_backend\"")
        .await
        .unwrap();
    assert!(
        drops_after > drops_before,
        "no_backend drops: {drops_before} → {drops_after}"
    );
    let drop = collect(dropped, 1).await;
    assert_eq!(
        (
            drop.first().map(|f| f.drop_reason.as_str()),
            drop.first().map(|f| f.service.as_str())
        ),
        (Some("no_backend"), Some("default/web")),
        "{drop:?}\n{}",
        a.metrics()
            .await
            .unwrap()
            .lines()
            .filter(|l| l.contains("flows") || l.contains("drops"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    k.ok(&["delete", "pods", "--all", "--wait=true", "--timeout=60s"])
        .unwrap();
}
