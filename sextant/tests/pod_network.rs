//! Sextant's own pod networking on two network-namespace nodes: each runs a real
//! `sextant agent` with its own containerd, which runs `sextant-cni` for every pod.
//! Pods get addresses from their Node's podCIDR, reach each other over TCP and UDP
//! on one node (handed over by `bpf_redirect_peer`, counted) and across nodes
//! (native routes from the Node objects), reach node addresses, and leave the
//! cluster masqueraded to their node's address. Deleting a pod removes its link.
// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener},
    path::Path,
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;
use sextant_tests::{
    agent::{NetworkCluster, SextantAgent},
    netns::Netns,
    sextant::Kubectl,
};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");

/// A demo server on node a, and a client (demo image: busybox + `/demo`) on each node.
fn pods(node_a: &str, node_b: &str) -> String {
    let pod = |name: &str, node: &str, server: bool| {
        let command = if server {
            String::new()
        } else {
            "\n    command: [sleep, \"3600\"]".to_owned()
        };
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: sextant.local/demo:v1{command}
"#
        )
    };
    [
        pod("server-a", node_a, true),
        pod("client-a", node_a, false),
        pod("client-b", node_b, false),
    ]
    .join("---\n")
}

fn pod_ip(k: &Kubectl, name: &str) -> Ipv4Addr {
    k.ok(&["get", "pod", name, "-o", "jsonpath={.status.podIP}"])
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name} has no pod IP: {e}"))
}

fn exec(k: &Kubectl, pod: &str, cmd: &[&str]) -> String {
    let mut args = vec!["exec", pod, "--"];
    args.extend_from_slice(cmd);
    k.ok(&args)
        .unwrap_or_else(|e| panic!("{pod}: {cmd:?}: {e}"))
}

/// An HTTP/1.0 GET from inside `pod` with busybox nc (busybox's static wget
/// crashes without the NSS files images lack). Stdin stays open a second: the
/// demo server (hyper) drops a connection whose client half-closed before the reply.
fn http_get(k: &Kubectl, pod: &str, addr: &str, path: &str) -> String {
    let script = format!(
        "(printf 'GET {path} HTTP/1.0\r\n\r\n'; sleep 1) | nc -w 5 {}",
        addr.replace(':', " ")
    );
    exec(k, pod, &["sh", "-c", &script])
}

/// `sextant_dataplane_forwarded_packets_total{path="<path>"}` from an agent.
async fn forwarded(agent: &SextantAgent, path: &str) -> u64 {
    let text = agent.metrics().await.unwrap();
    let prefix = format!("sextant_dataplane_forwarded_packets_total{{path=\"{path}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn host_links(ns: &Netns) -> usize {
    ns.ip(&["-o", "link", "show"])
        .unwrap()
        .lines()
        .filter(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|n| n.trim().starts_with("sx"))
        })
        .count()
}

#[tokio::test]
async fn pods_reach_each_other_and_the_outside_on_and_across_nodes() {
    let mut cluster = NetworkCluster::start(Path::new(BINARY), 2)
        .await
        .expect("two-node cluster");
    let (a, b) = (&cluster.agents[0], &cluster.agents[1]);
    let (ctrd_a, server, host_ip) = (&cluster.containerds[0], &cluster.server, cluster.host_ip);
    let ip_b = cluster.fabric.addr(2);
    let k = server.kubectl().unwrap();

    k.ok_with(
        &["apply", "-f", "-"],
        Some(&pods(&a.node_name, &b.node_name)),
    )
    .unwrap();
    let waited = k.run(
        &[
            "wait",
            "--for=condition=Ready",
            "pod/server-a",
            "pod/client-a",
            "pod/client-b",
            "--timeout=90s",
        ],
        None,
    );
    if !waited.as_ref().is_ok_and(|o| o.status.success()) {
        panic!(
            "pods not Ready: {:?}\n{}\nagent a:\n{}\ncontainerd a:\n{}",
            waited.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()),
            k.ok(&["get", "pods", "-o", "wide"]).unwrap_or_default(),
            a.log_tail(40),
            ctrd_a.log_tail(20)
        );
    }

    // Addresses come from each Node's podCIDR.
    let cidr = |node: &str| -> ipnet::Ipv4Net {
        k.ok(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"])
            .unwrap()
            .parse()
            .unwrap()
    };
    let (cidr_a, cidr_b) = (cidr(&a.node_name), cidr(&b.node_name));
    assert_ne!(cidr_a, cidr_b);
    let (server_ip, client_a_ip, client_b_ip) = (
        pod_ip(&k, "server-a"),
        pod_ip(&k, "client-a"),
        pod_ip(&k, "client-b"),
    );
    assert!(cidr_a.contains(&server_ip) && cidr_a.contains(&client_a_ip));
    assert!(
        cidr_b.contains(&client_b_ip),
        "{client_b_ip} outside {cidr_b}"
    );
    assert_ne!(server_ip, client_a_ip);
    // Each node routes to the other's podCIDR via its address, by Sextant's protocol.
    let routes = ctrd_a
        .netns()
        .ip(&["-4", "route", "show", "proto", "115"])
        .unwrap();
    assert!(routes.contains(&format!("{cidr_b} via {ip_b}")), "{routes}");

    // Same node, TCP and UDP, without the host stack.
    let peer_before = forwarded(a, "local_peer").await;
    let web = format!("{server_ip}:8080");
    let out = http_get(&k, "client-a", &web, "/same-node");
    assert!(out.contains("\"path\":\"/same-node\""), "{out}");
    let out = exec(
        &k,
        "client-a",
        &["/demo", "--send-udp", &web, "--message", "same-node"],
    );
    assert!(out.contains("server-a same-node"), "{out}");
    let peer_after = forwarded(a, "local_peer").await;
    // At least the TCP handshake, request, replies and the UDP exchange.
    assert!(
        peer_after >= peer_before + 6,
        "same-node packets skipping the host stack: {peer_before} → {peer_after}"
    );

    // Across nodes, TCP, UDP and ICMP.
    let out = http_get(&k, "client-b", &web, "/cross-node");
    assert!(out.contains("\"path\":\"/cross-node\""), "{out}");
    let out = exec(
        &k,
        "client-b",
        &["/demo", "--send-udp", &web, "--message", "cross-node"],
    );
    assert!(out.contains("server-a cross-node"), "{out}");
    let out = exec(
        &k,
        "client-a",
        &["ping", "-c", "2", "-W", "2", &client_b_ip.to_string()],
    );
    assert!(out.contains("2 packets received"), "{out}");

    // The nodes' own addresses (each agent's metrics endpoint listens there).
    for (pod, target) in [("client-a", a), ("client-b", a), ("client-a", b)] {
        let out = http_get(&k, pod, &target.metrics_addr, "/metrics");
        assert!(
            out.contains("kubelet_"),
            "{pod} → {}: {out}",
            target.metrics_addr
        );
    }

    // Out of the cluster: the host sees the node's address, not the pod's.
    let listener = TcpListener::bind((host_ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut conn, peer)) = listener.accept() {
            let mut buf = [0u8; 512];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 7\r\n\r\noutside");
            let _ = tx.send(peer.ip());
        }
    });
    let out = http_get(&k, "client-b", &format!("{host_ip}:{port}"), "/");
    assert!(out.ends_with("outside"), "{out}");
    let seen = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        seen,
        std::net::IpAddr::V4(ip_b),
        "masqueraded to node b's address"
    );

    // Deleting a pod removes its link on the node.
    let links_before = host_links(ctrd_a.netns());
    assert_eq!(links_before, 2, "one host-side link per pod on node a");
    k.ok(&["delete", "pod", "client-a", "--wait=true", "--timeout=60s"])
        .unwrap();
    sextant_tests::wait_for(
        "client-a's link to go",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let n = host_links(ctrd_a.netns());
            async move { (n == 1).then_some(()) }
        },
    )
    .await
    .unwrap();
    let records: Vec<Value> = std::fs::read_dir(a.data_dir().join("dataplane/endpoints"))
        .unwrap()
        .flatten()
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["podName"], "server-a");

    // Pods go while their agents still answer CNI DEL.
    k.ok(&["delete", "pods", "--all", "--wait=true", "--timeout=60s"])
        .unwrap();

    // Uninstall: no program, pin, route, rule or CNI file of Sextant's is left.
    let ns_a = cluster.containerds[0].netns().name().to_owned();
    let (conf_dir, bin_dir) = cluster.containerds[0].cni_dirs();
    let agent_a = &mut cluster.agents[0];
    let pins = agent_a.bpf_dir();
    assert!(pins.join("maps/SX_ENDPOINTS_V1").exists());
    agent_a.uninstall().expect("sextant agent --cleanup");
    assert!(!pins.exists(), "{} is left", pins.display());
    let ns = |args: &[&str]| {
        sextant_tests::run(
            std::process::Command::new("ip")
                .args(["-n", &ns_a])
                .args(args),
        )
        .unwrap()
    };
    assert_eq!(ns(&["-4", "route", "show", "proto", "115"]).trim(), "");
    let tables = sextant_tests::run(
        std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns_a}"))
            .args(["nft", "list", "tables"]),
    )
    .unwrap();
    assert!(!tables.contains("sextant"), "{tables}");
    assert!(!conf_dir.join("10-sextant.conflist").exists());
    assert!(!bin_dir.join("sextant-cni").exists());
}
