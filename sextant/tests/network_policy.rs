//! NetworkPolicy in the eBPF datapath, on two network-namespace nodes with real
//! agents, containerd and pods: default-deny ingress blocks new connections (on a
//! node and across nodes) while kubelet probes still pass; an allow for pods
//! labelled role=client on port 8080 lets exactly those in; an egress policy with
//! an ipBlock and except decides what a client may reach outside; every denial is
//! counted in `sextant_dataplane_drops_total{reason="policy_denied"}` and shows in
//! the Observe stream with the policy's name; default deny blocks ping too; a
//! killed agent leaves the policy in force and the restarted one keeps it.
// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::TcpListener,
    path::Path,
    time::Duration,
};

use serde_json::Value;
use sextant_dataplane::api::{Flow, ObserveRequest};
use sextant_tests::{
    agent::{NetworkCluster, SextantAgent},
    sextant::Kubectl,
    wait_for,
};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");
const CTL: &str = env!("CARGO_BIN_EXE_sextantctl");

/// Two web servers (one per node), a client on node a and another pod on node b.
fn workload(a: &str, b: &str) -> String {
    let pod = |name: &str, node: &str, labels: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {labels}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: sextant.local/demo:v1
    readinessProbe:
      httpGet: {{path: /readyz, port: 8080}}
      periodSeconds: 1
      failureThreshold: 2
"#
        )
    };
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
                   spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n";
    [
        pod("web-a", a, "{app: web}"),
        pod("web-b", b, "{app: web}"),
        pod("client", a, "{role: client}"),
        pod("other", b, "{role: other}"),
        service.to_owned(),
    ]
    .join("---\n")
}

const DEFAULT_DENY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

const ALLOW_CLIENTS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-clients}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: client}}
    ports:
    - {protocol: TCP, port: 8080}
"#;

/// Egress of the client: the web pods, and `cidr` minus `except` outside.
fn client_egress(cidr: &str, except: &[String]) -> String {
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: client-egress}}
spec:
  podSelector: {{matchLabels: {{role: client}}}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {{matchLabels: {{app: web}}}}
    ports:
    - {{port: 8080}}
  - to:
    - ipBlock: {{cidr: "{cidr}", except: {except:?}}}
"#
    )
}

/// Whether one `GET` from `pod` to `addr` is answered (1.5 s at most).
fn reaches(k: &Kubectl, pod: &str, addr: &str) -> bool {
    let out = k
        .run(
            &[
                "exec",
                pod,
                "--",
                "/demo",
                "--http-get",
                addr,
                "--timeout-ms",
                "1500",
            ],
            None,
        )
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    v["failed"] == 0
}

/// Waits until `pod` reaching `addr` is `want` (policy programming is
/// asynchronous), then checks it holds twice more.
async fn settles(k: &Kubectl, pod: &str, addr: &str, want: bool) {
    let what = format!(
        "{pod} → {addr} to be {}",
        if want { "allowed" } else { "denied" }
    );
    wait_for(
        &what,
        Duration::from_secs(15),
        Duration::from_millis(200),
        || async { (reaches(k, pod, addr) == want).then_some(()) },
    )
    .await
    .unwrap();
    for _ in 0..2 {
        assert_eq!(reaches(k, pod, addr), want, "{what}, and stay so");
    }
}

/// Flows from `stream` until one matches, waiting at most 10 s.
async fn find(
    stream: &mut tonic::Streaming<Flow>,
    what: &str,
    pred: impl Fn(&Flow) -> bool,
) -> Flow {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(f))) if pred(&f) => return f,
            Ok(Ok(Some(_))) => continue,
            other => panic!("no flow {what}: {other:?}"),
        }
    }
}

/// `sextant_dataplane_drops_total{reason="policy_denied"}` of an agent.
async fn policy_drops(agent: &SextantAgent) -> u64 {
    agent
        .counter("sextant_dataplane_drops_total", "reason=\"policy_denied\"")
        .await
        .unwrap()
}

fn ip_of(k: &Kubectl, pod: &str) -> String {
    k.ok(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"])
        .unwrap()
}

/// An HTTP server on the host's fabric address: the "outside" pods may reach.
fn outside(host: std::net::Ipv4Addr) -> String {
    let listener = TcpListener::bind((host, 0)).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let body = r#"{"hostname":"outside"}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[tokio::test]
async fn network_policies_deny_allow_and_report_by_name() {
    let mut cluster = NetworkCluster::start(Path::new(BINARY), 2)
        .await
        .expect("two-node cluster");
    let k = cluster.server.kubectl().unwrap();
    let (a, b) = (&cluster.agents[0], &cluster.agents[1]);
    k.ok_with(
        &["apply", "-f", "-"],
        Some(&workload(&a.node_name, &b.node_name)),
    )
    .unwrap();
    if let Err(e) = k.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod",
        "--all",
        "--timeout=90s",
    ]) {
        panic!(
            "{e}\n{}\nagent a:\n{}",
            k.ok(&["get", "pods", "-o", "wide"]).unwrap_or_default(),
            a.log_tail(20)
        );
    }
    let web_a = format!("{}:8080", ip_of(&k, "web-a"));
    let web_b = format!("{}:8080", ip_of(&k, "web-b"));
    let outside = outside(cluster.host_ip);

    // sextantctl follows every node's flows while the policies come and go.
    let ctl = Kubectl::with_binary(Path::new(CTL), &cluster.server.kubeconfig()).unwrap();
    let flows = ctl.spawn(&["flows", "--follow"]).unwrap();

    // No policy: everything flows.
    for (from, to) in [("client", &web_a), ("other", &web_a), ("client", &outside)] {
        assert!(reaches(&k, from, to), "{from} → {to} without policy");
    }

    // Default deny: no new connection into any pod, on a node or across.
    let mut dropped_a = a
        .observe(ObserveRequest {
            verdict: "dropped".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (before_a, before_b) = (policy_drops(a).await, policy_drops(b).await);
    k.ok_with(&["apply", "-f", "-"], Some(DEFAULT_DENY))
        .unwrap();
    settles(&k, "client", &web_a, false).await;
    settles(&k, "other", &web_a, false).await;
    settles(&k, "client", &web_b, false).await;
    let denied = find(&mut dropped_a, "denied by default-deny", |f| {
        f.drop_reason == "policy_denied" && f.policy == "default/default-deny"
    })
    .await;
    eprintln!("denied: {denied:?}");
    assert!(policy_drops(a).await > before_a, "drops on node a");
    assert!(policy_drops(b).await > before_b, "drops on node b");
    // Default deny covers ping too (a rule without ports would allow it).
    let web_a_ip = ip_of(&k, "web-a");
    assert!(!pings(&k, "other", &web_a_ip), "ping under default deny");
    // The kubelet's probes come from the node: the pods stay Ready.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ready = k
        .ok(&[
            "get",
            "pod",
            "web-a",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        ])
        .unwrap();
    assert_eq!(ready, "True", "probes from the node still pass");

    // Allow role=client on 8080: exactly the client gets in, on both nodes.
    let mut allowed_a = a
        .observe(ObserveRequest {
            pod: "web-a".into(),
            verdict: "forwarded".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    k.ok_with(&["apply", "-f", "-"], Some(ALLOW_CLIENTS))
        .unwrap();
    settles(&k, "client", &web_a, true).await;
    settles(&k, "client", &web_b, true).await;
    // Each node's agent tells on the policy which of its pods it enforces it for.
    let mut told = String::new();
    for _ in 0..50 {
        told = k
            .ok(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.kind=NetworkPolicy,involvedObject.name=allow-clients,reason=PolicyEnforced",
                "-o",
                "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
            ])
            .unwrap();
        if told.contains("for pod(s) web-a") && told.contains("for pod(s) web-b") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        told.contains(&format!(
            "Enforced on node {} for pod(s) web-a",
            a.node_name
        )) && told.contains(&format!(
            "Enforced on node {} for pod(s) web-b",
            b.node_name
        )),
        "PolicyEnforced events: {told}"
    );
    settles(&k, "other", &web_a, false).await;
    settles(&k, "other", &web_b, false).await;
    let allowed = find(&mut allowed_a, "allowed by allow-clients", |f| {
        f.policy == "default/allow-clients" && f.source_pod == "default/client"
    })
    .await;
    assert_eq!(allowed.verdict, "forwarded");
    let other = format!("{}:", ip_of(&k, "other"));
    let denied = find(&mut dropped_a, "other denied", |f| {
        f.policy == "default/default-deny" && f.source.starts_with(&other)
    })
    .await;
    assert_eq!(
        denied.direction, "ingress",
        "other comes from node b: {denied:?}"
    );
    followed_flows(flows, &k);

    // The policy outlives its agent: killed, node a still judges as before (the
    // maps are pinned); restarted, it adopts them and computes the same identities.
    // (Only node b's pods can be exec'd into meanwhile: node a's kubelet is down.)
    let xdp_before = xdp_link_pins(&cluster.agents[0]);
    assert_eq!(xdp_before.len(), 1, "the uplink's XDP link: {xdp_before:?}");
    cluster.agents[0].kill();
    assert!(
        !reaches(&k, "other", &web_a),
        "denied with node a's agent down"
    );
    cluster.agents[0].restart(&cluster.server).await.unwrap();
    // The restarted agent took the pinned XDP link over (given its program in
    // place): one pin, its own.
    let xdp_after = xdp_link_pins(&cluster.agents[0]);
    assert!(
        xdp_after.len() == 1 && xdp_after != xdp_before,
        "XDP link pins before {xdp_before:?}, after {xdp_after:?}"
    );
    settles(&k, "client", &web_a, true).await;
    settles(&k, "other", &web_a, false).await;
    let a = &cluster.agents[0];
    let mut dropped_a = a
        .observe(ObserveRequest {
            verdict: "dropped".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Egress: the client may reach the web pods and the fabric, except the host.
    let host = cluster.host_ip;
    let fabric = format!(
        "{}/24",
        std::net::Ipv4Addr::from(u32::from(host) & 0xffff_ff00)
    );
    let egress = client_egress(&fabric, &[format!("{host}/32")]);
    k.ok_with(&["apply", "-f", "-"], Some(&egress)).unwrap();
    settles(&k, "client", &outside, false).await;
    settles(&k, "client", &web_a, true).await;
    let by_egress = find(&mut dropped_a, "denied by client-egress", |f| {
        f.policy == "default/client-egress" && f.source_pod == "default/client"
    })
    .await;
    assert_eq!(by_egress.direction, "egress");
    // The ipBlock without the except lets it out.
    k.ok_with(
        &["apply", "-f", "-"],
        Some(&client_egress(&format!("{host}/32"), &[])),
    )
    .unwrap();
    settles(&k, "client", &outside, true).await;

    // What node a's maps hold for the Service: its VIP and both web pods.
    let vip = k
        .ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .unwrap();
    let table = ctl
        .ok(&["dataplane", "services", "--node", &a.node_name])
        .unwrap();
    let row = table
        .lines()
        .find(|l| l.contains("default/web "))
        .unwrap_or_else(|| panic!("no default/web row: {table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    let mut backends: Vec<&str> = cells[3].split(',').collect();
    backends.sort_unstable();
    let mut want = vec![web_a.as_str(), web_b.as_str()];
    want.sort_unstable();
    assert_eq!(
        (cells[0], cells[2], backends),
        (a.node_name.as_str(), format!("{vip}:80/TCP").as_str(), want),
        "{table}"
    );
    assert!(table.starts_with("NODE "), "{table}");

    // Through the VIP: node a's conntrack map holds the client's DNAT entry,
    // and the client's debug view shows the flow.
    let frontend = format!("{vip}:80");
    settles(&k, "client", &frontend, true).await;
    let ct = ctl
        .ok(&["dataplane", "ct", "--node", &a.node_name])
        .unwrap();
    assert!(
        ct.starts_with("NODE ")
            && ct.lines().any(|l| {
                l.contains(&format!(" {frontend} "))
                    && l.contains(" dnat ")
                    && l.contains("default/client")
            }),
        "the client's DNAT entry to {frontend}:\n{ct}"
    );
    let debug = ctl.ok(&["debug", "pod", "client"]).unwrap();
    assert!(
        debug.contains(&format!("via {frontend}")) && debug.contains("Pod:    default/client"),
        "{debug}"
    );
    // Every node's programs are attached and its maps readable.
    let status = ctl.ok(&["cluster", "status"]).unwrap();
    for agent in &cluster.agents {
        let row = status
            .lines()
            .find(|l| l.starts_with(&format!("{} ", agent.node_name)))
            .unwrap_or_default();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert!(
            cells.get(1) == Some(&"True")
                && cells.get(5) == Some(&"ok")
                && cells
                    .get(6)
                    .is_some_and(|p| p.contains("from_pod(") && p.contains("from_uplink(")),
            "{} ready, its programs attached:\n{status}",
            agent.node_name
        );
    }

    // Deleting the policies opens everything again.
    k.ok(&["delete", "networkpolicy", "--all"]).unwrap();
    settles(&k, "other", &web_a, true).await;
    settles(&k, "other", &web_b, true).await;
    assert!(pings(&k, "other", &web_a_ip), "ping without policy");
}

/// Stops `sextantctl flows --follow` and checks it showed forwarded flows and
/// flows dropped by default-deny and allowed by allow-clients, by name.
fn followed_flows(mut flows: std::process::Child, k: &Kubectl) {
    let _ = flows.kill();
    let out = flows.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let client = format!("default/client ({}:", ip_of(k, "client"));
    let lines: Vec<&str> = out.lines().collect();
    let shown = |pred: &dyn Fn(&str) -> bool| lines.iter().any(|l| pred(l));
    assert!(
        shown(&|l| l.contains(" FORWARDED") && !l.contains("policy=")),
        "a forwarded flow without policy: {out}"
    );
    assert!(
        shown(&|l| l.contains(" DROPPED (policy_denied) policy=default/default-deny")),
        "a flow dropped by default-deny: {out}"
    );
    assert!(
        shown(&|l| l.contains(&client)
            && l.contains(" FORWARDED")
            && l.contains("policy=default/allow-clients")),
        "the client's flow allowed by allow-clients: {out}"
    );
}

/// Whether one ping from `pod` to `ip` is answered within 2 s.
fn pings(k: &Kubectl, pod: &str, ip: &str) -> bool {
    k.run(&["exec", pod, "--", "ping", "-c", "1", "-W", "2", ip], None)
        .unwrap()
        .status
        .success()
}

/// The pinned XDP links on the agent's uplink (`eth0_uplink_xdp_<pid>`).
fn xdp_link_pins(agent: &SextantAgent) -> Vec<String> {
    let mut pins: Vec<String> = std::fs::read_dir(agent.bpf_dir().join("links"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("eth0_uplink_xdp_"))
        .collect();
    pins.sort();
    pins
}
